-- mosquitto-im store on PostgreSQL (cluster mode), version 1: the same
-- versions and meaning as schema/NNN_*.sql, in PostgreSQL's words.
-- Applied by the plugin under an advisory lock, one transaction per version,
-- recorded in im_schema_version. Every statement may run again harmlessly
-- (IF NOT EXISTS, ON CONFLICT): a migration interrupted or re-run by hand
-- leaves the same schema. Never edit a released migration: add NNN_<what>.sql.
--
-- Text columns are COLLATE "C": names compare and sort bytewise, as in the
-- SQLite store, whatever the database's locale. "user" is a reserved word
-- here: the user columns are called usr.

-- One row per timeline ("u/<user>", "g/<group>"). Unlike the SQLite store,
-- head (the last seq handed out) is written by every append: the UPDATE that
-- takes the next seq holds the row's lock until the batch commits, which is
-- what serialises the brokers writing one timeline and keeps seqs gap-free.
-- fillfactor leaves room for those updates to stay on their page (HOT).
CREATE TABLE IF NOT EXISTS timelines(
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text COLLATE "C" NOT NULL UNIQUE,
    head        bigint NOT NULL DEFAULT 0,
    first_seq   bigint NOT NULL DEFAULT 1,   -- oldest seq still stored
    created_ms  bigint NOT NULL
) WITH (fillfactor = 50);

-- One row per message per timeline it is in. A direct message is in the
-- recipient's inbox (copy = 0) and in the sender's inbox (copy = 1).
CREATE TABLE IF NOT EXISTS messages(
    tl          bigint NOT NULL,
    seq         bigint NOT NULL,
    ts_ms       bigint NOT NULL,
    sender      text COLLATE "C" NOT NULL,
    cmid        text COLLATE "C",
    peer        text COLLATE "C" NOT NULL,   -- the timeline the sender addressed ("to")
    ctype       text COLLATE "C",
    flags       integer NOT NULL DEFAULT 0,
    expires_ms  bigint NOT NULL DEFAULT 0,
    copy        smallint NOT NULL DEFAULT 0,
    body        bytea NOT NULL,
    PRIMARY KEY(tl, seq)
);

-- Dedup by (sender, cmid): the original and the sender's copy. Also what
-- stops two brokers storing the same (sender, cmid) at once: the second
-- insert waits for the first transaction and then finds the conflict.
CREATE UNIQUE INDEX IF NOT EXISTS messages_cmid ON messages(sender, cmid, copy) WHERE cmid IS NOT NULL;

-- msg-fin: per (timeline, user, client id), the highest seq confirmed.
CREATE TABLE IF NOT EXISTS cursors(
    tl          bigint NOT NULL,
    usr         text COLLATE "C" NOT NULL,
    client_id   text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    updated_ms  bigint NOT NULL,
    PRIMARY KEY(tl, usr, client_id)
);
