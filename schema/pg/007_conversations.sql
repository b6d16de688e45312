-- Conversations (issue #15): edits and recalls, read marks, the list. The
-- same meaning as schema/007_conversations.sql; every statement may run
-- again harmlessly.
--
-- Several brokers write these tables at once. What keeps them right is in
-- the statements (store_pg_conv.c): unread counts move by single atomic
-- UPDATEs (+1 per message, -n per read), read marks only go up (greatest),
-- and a conversation's last message only moves to a higher seq.

-- A message that edits or recalls another names it (the seq it changes, in
-- its own timeline); a direct message knows its seq in the other inbox (the
-- recipient's row: the sender's copy; the copy: the recipient's row).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS ref_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS peer_seq bigint NOT NULL DEFAULT 0;
-- The edits of a message, found when it is recalled (their bodies go too).
CREATE INDEX IF NOT EXISTS messages_ref ON messages(tl, ref_seq) WHERE ref_seq > 0;

-- A user's read mark per timeline: the highest seq any of its devices
-- acknowledged (the max of its cursors).
CREATE TABLE IF NOT EXISTS reads(
    tl          bigint NOT NULL,
    usr         text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    PRIMARY KEY(tl, usr)
);
INSERT INTO reads(tl, usr, seq) SELECT tl, usr, max(seq) FROM cursors GROUP BY tl, usr
    ON CONFLICT (tl, usr) DO UPDATE SET seq = greatest(reads.seq, excluded.seq);

-- One row per direct conversation and side: owner's view of the messages
-- exchanged with peer (in u/<owner>). unread counts the peer's messages
-- after owner's read mark.
CREATE TABLE IF NOT EXISTS convs(
    owner       text COLLATE "C" NOT NULL,
    peer        text COLLATE "C" NOT NULL,
    last_seq    bigint NOT NULL,           -- in u/<owner>
    last_ts     bigint NOT NULL,
    last_sender text COLLATE "C" NOT NULL,
    last_flags  integer NOT NULL DEFAULT 0,
    preview     text,                      -- NULL: none (binary, sealed at rest, recalled)
    unread      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY(owner, peer)
);
CREATE INDEX IF NOT EXISTS convs_recent ON convs(owner, last_ts, peer);

-- A group's last message, shared by its members.
CREATE TABLE IF NOT EXISTS group_last(
    grp         text COLLATE "C" PRIMARY KEY,
    last_seq    bigint NOT NULL,
    last_ts     bigint NOT NULL,
    last_sender text COLLATE "C" NOT NULL,
    last_flags  integer NOT NULL DEFAULT 0,
    preview     text
);

-- What exists already: the last message of each direct conversation and of
-- each group (previews start with the next message), and the unread counts
-- against the read marks. Rows already there are kept.
INSERT INTO convs(owner, peer, last_seq, last_ts, last_sender, last_flags, unread)
    SELECT DISTINCT ON (t.id, p.peer) substr(t.name, 3), p.peer, m.seq, m.ts_ms, m.sender, m.flags, 0
    FROM messages m JOIN timelines t ON t.id = m.tl
        CROSS JOIN LATERAL (SELECT CASE WHEN m.copy = 1 THEN substr(m.peer, 3) ELSE m.sender END AS peer) p
    WHERE t.name LIKE 'u/%' AND (m.flags & 1) = 0
    ORDER BY t.id, p.peer, m.seq DESC
    ON CONFLICT (owner, peer) DO NOTHING;
UPDATE convs SET unread = (
    SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl
    WHERE t.name = 'u/' || convs.owner AND m.copy = 0 AND m.sender = convs.peer AND (m.flags & 1) = 0
      AND m.seq > coalesce((SELECT r.seq FROM reads r WHERE r.tl = t.id AND r.usr = convs.owner), 0));
INSERT INTO group_last(grp, last_seq, last_ts, last_sender, last_flags)
    SELECT DISTINCT ON (t.id) substr(t.name, 3), m.seq, m.ts_ms, m.sender, m.flags
    FROM messages m JOIN timelines t ON t.id = m.tl
    WHERE t.name LIKE 'g/%'
    ORDER BY t.id, m.seq DESC
    ON CONFLICT (grp) DO NOTHING;
