-- Button API V3 data contract. Applied at every start; every statement is idempotent.
-- The version marker is PRAGMA user_version (set by db.open_database after this script).
-- Names (usernames, channel names) compare case-insensitively for ASCII letters only: NOCASE.

CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    token         TEXT UNIQUE,                 -- UUID4; NULL until generatetoken
    created_at    TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS channels (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE COLLATE NOCASE,
    creator_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS members (
    channel_id INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (channel_id, user_id)
) WITHOUT ROWID;
-- getchannels: a user's channels ordered by channel id.
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, channel_id);

-- One row per message of every kind. AUTOINCREMENT: an id is never reused after a delete,
-- so ids increase in time. `sender`, `channel` and `recipient` hold the names as shown in
-- the message object (stored spelling; the target as given for `discord` kind).
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL CHECK (kind IN ('public', 'channel', 'dm', 'discord')),
    sender_id    INTEGER REFERENCES users(id) ON DELETE SET NULL,  -- NULL: written on Discord
    sender       TEXT NOT NULL,
    message      TEXT NOT NULL,
    channel_id   INTEGER REFERENCES channels(id) ON DELETE CASCADE,
    channel      TEXT,
    recipient_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    recipient    TEXT,
    timestamp    TEXT NOT NULL,
    source       TEXT NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'discord'))
);
-- getmessagesforeveryone: the public feed, newest first.
CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, id);
-- readmessagesfromchannel (channel mode).
CREATE INDEX IF NOT EXISTS messages_by_channel ON messages (channel_id, id);
-- getmysentmessages.
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (sender_id, id);

-- getdms: one row per side of a DM (one row for a DM to oneself), so "my DMs" and
-- "my DMs with one user" are each a single index range.
CREATE TABLE IF NOT EXISTS dm_links (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    peer_id    INTEGER REFERENCES users(id) ON DELETE SET NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dm_links_by_peer ON dm_links (user_id, peer_id, message_id);
CREATE INDEX IF NOT EXISTS dm_links_by_message ON dm_links (message_id);
