-- What the store says about itself, one row per key:
--   store_id     8 random bytes, made when the database is created (or when
--                the plugin finds it was rolled back behind its journal);
--                clients that see it change start over from seq 0.
--   frame_key    16 random bytes: the key of the tag in every frame the
--                plugin sends, so its ACL check can tell them from forgeries.
--   applied_lsn  the last journal record stored, written in the same
--                transaction as the record: replay starts after it.
-- The plugin fills missing keys when it opens the database.
CREATE TABLE meta(
    key         TEXT PRIMARY KEY,
    value       BLOB NOT NULL
) WITHOUT ROWID;

-- Presence contacts, directed: `writer` sent `reader` a direct message, so
-- `reader` may see `writer`'s presence (plugin_opt_presence contacts). The
-- undirected `contacts` table let anyone who wrote to bob, or put him in a
-- group, watch him; it is rebuilt from the stored direct messages.
CREATE TABLE wrote(
    writer      TEXT NOT NULL,
    reader      TEXT NOT NULL,
    since_ms    INTEGER NOT NULL,
    PRIMARY KEY(writer, reader)
) WITHOUT ROWID;

INSERT OR IGNORE INTO wrote(writer, reader, since_ms)
    SELECT sender, substr(peer, 3), min(ts_ms) FROM messages
    WHERE copy = 0 AND peer LIKE 'u/%' AND (flags & 1) = 0 AND sender <> substr(peer, 3)
    GROUP BY sender, peer;

DROP TABLE contacts;
