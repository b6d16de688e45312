-- Compression (plugin_opt_compress_min_bytes): a body flagged compressed
-- (flags bit 2) is a zlib stream that inflates to raw_len bytes.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS raw_len bigint NOT NULL DEFAULT 0;
