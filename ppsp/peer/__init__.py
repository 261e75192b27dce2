"""PPSPP, the Peer-to-Peer Streaming Peer Protocol (RFC 7574)."""
