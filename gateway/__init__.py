"""Site gateway: ingest device CBOR, check, alarm locally, forward to the district."""
