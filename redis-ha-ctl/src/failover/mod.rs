//! Sentinel-style failover decisions as a pure state machine (see issue 3).
