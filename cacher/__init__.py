"""The cacher (DESIGN §1): a daemon near CSCs that caches verified chunks on disk
(:mod:`cacher.cache`), decides what to admit, evict and prefetch (:mod:`cacher.policy`),
serves CSCs over PPSPP and pushes the head chunks right after the handshake (F4)."""
