-- Groups: read diffusion. A group's messages are stored once, in the
-- timeline "g/<name>"; membership decides who may read them.
CREATE TABLE IF NOT EXISTS groups(
    name        text COLLATE "C" PRIMARY KEY,
    owner       text COLLATE "C" NOT NULL,
    created_ms  bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS members(
    grp         text COLLATE "C" NOT NULL,
    usr         text COLLATE "C" NOT NULL,
    joined_ms   bigint NOT NULL,
    PRIMARY KEY(grp, usr)
);

CREATE INDEX IF NOT EXISTS members_by_user ON members(usr, grp);
