-- Conversations (issue #15): edits and recalls, read marks, the list.

-- A message that edits or recalls another names it (the seq it changes, in
-- its own timeline); a direct message knows its seq in the other inbox (the
-- recipient's row: the sender's copy; the copy: the recipient's row), so an
-- edit reaches both and a read mark in u/<peer> can be mapped to the
-- sender's own copies.
ALTER TABLE messages ADD COLUMN ref_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN peer_seq INTEGER NOT NULL DEFAULT 0;
-- The edits of a message, found when it is recalled (their bodies go too).
CREATE INDEX messages_ref ON messages(tl, ref_seq) WHERE ref_seq > 0;

-- A user's read mark per timeline: the highest seq any of its devices
-- acknowledged (the max of its cursors), kept with every ack.
CREATE TABLE reads(
    tl          INTEGER NOT NULL,
    user        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY(tl, user)
) WITHOUT ROWID;
INSERT INTO reads(tl, user, seq) SELECT tl, user, max(seq) FROM cursors GROUP BY tl, user;

-- One row per direct conversation and side: owner's view of the messages
-- exchanged with peer (in u/<owner>). unread counts the peer's messages
-- after owner's read mark.
CREATE TABLE convs(
    owner       TEXT NOT NULL,
    peer        TEXT NOT NULL,
    last_seq    INTEGER NOT NULL,      -- in u/<owner>
    last_ts     INTEGER NOT NULL,
    last_sender TEXT NOT NULL,
    last_flags  INTEGER NOT NULL DEFAULT 0,
    preview     TEXT,                  -- NULL: none (binary, sealed at rest, recalled)
    unread      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(owner, peer)
) WITHOUT ROWID;
CREATE INDEX convs_recent ON convs(owner, last_ts, peer);

-- A group's last message, shared by its members.
CREATE TABLE group_last(
    grp         TEXT PRIMARY KEY,
    last_seq    INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    last_sender TEXT NOT NULL,
    last_flags  INTEGER NOT NULL DEFAULT 0,
    preview     TEXT
) WITHOUT ROWID;

-- What exists already: the last message of each direct conversation and of
-- each group (previews start with the next message), and the unread counts
-- against the read marks.
INSERT INTO convs(owner, peer, last_seq, last_ts, last_sender, last_flags, unread)
    SELECT substr(t.name, 3),
           CASE WHEN m.copy = 1 THEN substr(m.peer, 3) ELSE m.sender END AS p,
           max(m.seq), m.ts_ms, m.sender, m.flags, 0
    FROM messages m JOIN timelines t ON t.id = m.tl
    WHERE t.name LIKE 'u/%' AND (m.flags & 1) = 0
    GROUP BY t.id, p;
UPDATE convs SET unread = (
    SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl
    WHERE t.name = 'u/' || convs.owner AND m.copy = 0 AND m.sender = convs.peer AND (m.flags & 1) = 0
      AND m.seq > coalesce((SELECT r.seq FROM reads r WHERE r.tl = t.id AND r.user = convs.owner), 0));
INSERT INTO group_last(grp, last_seq, last_ts, last_sender, last_flags)
    SELECT substr(t.name, 3), max(m.seq), m.ts_ms, m.sender, m.flags
    FROM messages m JOIN timelines t ON t.id = m.tl
    WHERE t.name LIKE 'g/%' GROUP BY t.id;
