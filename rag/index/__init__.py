"""Stage 2: the index on disk. Embedders and their cache, the Chroma store, the SQLite catalog with its
lexical index, the write side (`ingest`) and the read side (`reader`)."""
