-- Encryption at rest (plugin_opt_store_key_file): which key sealed a body.
-- 0 = stored as given. Rows sealed with key N hold nonce || ciphertext || tag.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS key_id integer NOT NULL DEFAULT 0;
