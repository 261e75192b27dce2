"""The content sharing client (DESIGN §1): channel list from the portal, peers from the
tracker, chunks over PPSPP, and the playback buffer model (:mod:`csc.playback`) that turns
verified chunks into startup delays, stalls, Q1 and Q2."""
