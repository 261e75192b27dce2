"""PPSP: the peer protocol PPSPP (RFC 7574) and the tracker protocol PPSP-TP (RFC 7846)."""
