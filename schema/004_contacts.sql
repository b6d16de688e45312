-- Who has exchanged a direct message with whom (a < b), for presence
-- visibility (plugin_opt_presence contacts). Written once per pair.
CREATE TABLE contacts(
    a           TEXT NOT NULL,
    b           TEXT NOT NULL,
    since_ms    INTEGER NOT NULL,
    PRIMARY KEY(a, b)
) WITHOUT ROWID;
