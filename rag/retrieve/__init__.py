"""Stage 3: hybrid retrieval over the index: dense + lexical hits fused into one ranked `Hit` per paper."""
