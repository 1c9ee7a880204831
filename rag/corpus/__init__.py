"""Stage 1: corpus files in, deduplicated `Paper` records and token-counted `Chunk`s out."""
