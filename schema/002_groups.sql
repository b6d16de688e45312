-- Groups: read diffusion. A group's messages are stored once, in the
-- timeline "g/<name>"; membership decides who may read them.
CREATE TABLE groups(
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE members(
    grp         TEXT NOT NULL,
    user        TEXT NOT NULL,
    joined_ms   INTEGER NOT NULL,
    PRIMARY KEY(grp, user)
) WITHOUT ROWID;

CREATE INDEX members_by_user ON members(user, grp);
