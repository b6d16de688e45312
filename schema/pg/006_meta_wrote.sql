-- What the store says about itself, one row per key, shared by every broker
-- (node) of the cluster:
--   store_id     8 random bytes, made when the store is created (or when a
--                broker finds it was rolled back behind its journal);
--                clients that see it change start over from seq 0.
--   frame_key    16 random bytes: the key of the tag in every frame the
--                plugin sends, so its ACL check can tell them from forgeries.
-- The first broker to open the store makes them; the others read them.
CREATE TABLE IF NOT EXISTS meta(
    key         text COLLATE "C" PRIMARY KEY,
    value       bytea NOT NULL
);

-- Per broker (node_id): each has its own journal, so the journal position
-- it stored (applied_lsn, written in the same transaction as the records;
-- replay starts after it) is its own. commit_no numbers the broker's
-- writing transactions: after a COMMIT whose answer was lost with the
-- connection, it tells whether the commit took. token is drawn by the
-- broker that opened the store as node_id last; commits carrying another
-- token fail, so two brokers never share one position.
CREATE TABLE IF NOT EXISTS nodes(
    node_id     text COLLATE "C" PRIMARY KEY,
    applied_lsn bigint NOT NULL DEFAULT 0,
    commit_no   bigint NOT NULL DEFAULT 0,
    token       bigint NOT NULL DEFAULT 0,
    updated_ms  bigint NOT NULL DEFAULT 0
);

-- Presence contacts, directed: `writer` sent `reader` a direct message, so
-- `reader` may see `writer`'s presence (plugin_opt_presence contacts).
CREATE TABLE IF NOT EXISTS wrote(
    writer      text COLLATE "C" NOT NULL,
    reader      text COLLATE "C" NOT NULL,
    since_ms    bigint NOT NULL,
    PRIMARY KEY(writer, reader)
);

INSERT INTO wrote(writer, reader, since_ms)
    SELECT sender, substr(peer, 3), min(ts_ms) FROM messages
    WHERE copy = 0 AND peer LIKE 'u/%' AND (flags & 1) = 0 AND sender <> substr(peer, 3)
    GROUP BY sender, peer
    ON CONFLICT DO NOTHING;
