-- Conversations, second round (issue #20): what a read mark tells whom,
-- edits and recalls outside the unread counts, and a conversation page
-- whose cost does not depend on the number of groups. The same meaning as
-- schema/008_conv_reads.sql; every statement may run again harmlessly.
--
-- Who writes what, under which lock (store/pg/conv.c): read_seq with the
-- owner's read mark (owner's inbox row lock), sent_seq with the message
-- (the same lock), edits with the group's message (the group's timeline
-- row lock), and a member's last_ts with its group's message or
-- membership change (the same lock).

-- owner's side of a direct conversation keeps how far owner read peer's
-- messages (the highest seq of peer's messages at or below owner's mark)
-- and where peer's last message is, both seqs in u/<owner>: what peer may
-- learn of owner's read mark, and no more.
ALTER TABLE convs ADD COLUMN IF NOT EXISTS read_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE convs ADD COLUMN IF NOT EXISTS sent_seq bigint NOT NULL DEFAULT 0;

-- Edits and recalls are not messages to read. A group counts its own
-- (edits), and a member's mark in it the ones at or below the mark, so
-- that unread = the seqs after the mark less the edits and recalls there.
ALTER TABLE group_last ADD COLUMN IF NOT EXISTS edits bigint NOT NULL DEFAULT 0;
ALTER TABLE reads ADD COLUMN IF NOT EXISTS edits bigint NOT NULL DEFAULT 0;

-- A group of a few members (fan = 1: store.h, IM_STORE_FAN_MAX) writes
-- its last activity into each member's row, so that a user's groups come
-- out of one index range, latest first, however many there are. A larger
-- group does not (a message would cost a write per member): its members'
-- rows say -1, and those groups are ordered when listed. A row is made
-- with 0 and set by the group's notice in the same transaction (0, not
-- -1: on PostgreSQL the dead index entries of a row's first version then
-- lie below every page, not in the range of the larger groups).
ALTER TABLE group_last ADD COLUMN IF NOT EXISTS fan integer NOT NULL DEFAULT 1;
ALTER TABLE members ADD COLUMN IF NOT EXISTS last_ts bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS members_recent ON members(usr, last_ts, grp);

-- What exists already.
UPDATE convs SET
    sent_seq = coalesce((SELECT max(m.seq) FROM messages m JOIN timelines t ON t.id = m.tl
        WHERE t.name = 'u/' || convs.owner AND m.copy = 0 AND m.sender = convs.peer AND (m.flags & 1) = 0), 0),
    read_seq = coalesce((SELECT max(m.seq) FROM messages m JOIN timelines t ON t.id = m.tl
        WHERE t.name = 'u/' || convs.owner AND m.copy = 0 AND m.sender = convs.peer AND (m.flags & 1) = 0
          AND m.seq <= coalesce((SELECT r.seq FROM reads r WHERE r.tl = t.id AND r.usr = convs.owner), 0)), 0),
    unread = (SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl
        WHERE t.name = 'u/' || convs.owner AND m.copy = 0 AND m.sender = convs.peer AND (m.flags & 13) = 0
          AND m.seq > coalesce((SELECT r.seq FROM reads r WHERE r.tl = t.id AND r.usr = convs.owner), 0))
    WHERE owner <> peer;
UPDATE group_last SET
    edits = (SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl
        WHERE t.name = 'g/' || group_last.grp AND (m.flags & 12) <> 0),
    fan = CASE WHEN (SELECT count(*) FROM members m WHERE m.grp = group_last.grp) <= 32 THEN 1 ELSE 0 END;
UPDATE reads SET edits = (SELECT count(*) FROM messages m WHERE m.tl = reads.tl AND m.seq <= reads.seq AND (m.flags & 12) <> 0)
    WHERE tl IN (SELECT id FROM timelines WHERE name LIKE 'g/%');
UPDATE members SET last_ts = CASE WHEN g.fan = 1 THEN g.last_ts ELSE -1 END
    FROM group_last g WHERE g.grp = members.grp;
