-- mosquitto-im store, version 1.
-- Applied in one transaction by the plugin when PRAGMA user_version < 1.
-- Never edit a released migration: add NNN_<what>.sql instead.

-- One row per timeline ("u/<user>", "g/<group>"). The head (last seq handed
-- out) is max(head_seq, max(messages.seq)): head_seq is written when retention
-- trims, so a trimmed timeline keeps counting, not on every message.
CREATE TABLE timelines(
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    head_seq    INTEGER NOT NULL DEFAULT 0,
    first_seq   INTEGER NOT NULL DEFAULT 1,  -- oldest seq still stored
    created_ms  INTEGER NOT NULL
);

-- One row per message per timeline it is in. A direct message is in the
-- recipient's inbox (copy = 0) and in the sender's inbox (copy = 1).
-- WITHOUT ROWID: rows are read by (tl, seq) ranges only, and IM bodies are
-- small; the clustered key makes a sync one sequential scan.
CREATE TABLE messages(
    tl          INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    sender      TEXT NOT NULL,
    cmid        TEXT,
    peer        TEXT NOT NULL,        -- the timeline the sender addressed ("to")
    ctype       TEXT,
    flags       INTEGER NOT NULL DEFAULT 0,
    expires_ms  INTEGER NOT NULL DEFAULT 0,
    copy        INTEGER NOT NULL DEFAULT 0,
    body        BLOB NOT NULL,
    PRIMARY KEY(tl, seq)
) WITHOUT ROWID;

-- Dedup by (sender, cmid): the original and the sender's copy.
CREATE UNIQUE INDEX messages_cmid ON messages(sender, cmid, copy) WHERE cmid IS NOT NULL;

-- msg-fin: per (timeline, user, client id), the highest seq confirmed.
CREATE TABLE cursors(
    tl          INTEGER NOT NULL,
    user        TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY(tl, user, client_id)
) WITHOUT ROWID;
