"""PPSP-TP, the PPSP tracker protocol (RFC 7846) — arrives with issue 3."""
