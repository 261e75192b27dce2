"""The `p2pcdn` command-line front and, later, the network-namespace lab."""
