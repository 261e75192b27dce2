"""Interop: pcap tools and (with the `interop` extra) scapy layers. Daemons never import scapy."""
