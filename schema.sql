-- Button API V3 data contract. Applied at every start; every statement is idempotent.
-- The version marker is PRAGMA user_version (set by db.open_database after this script).
-- Names (usernames, channel names) compare case-insensitively for ASCII letters only: NOCASE.

CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    token         TEXT UNIQUE,                 -- UUID4; NULL until generatetoken
    created_at    TEXT NOT NULL,
    name_key      TEXT,                        -- db.name_key(username): look-alikes collide
    role          TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'moderator', 'admin')),
    timed_out_until TEXT                       -- timeoutuser: no sends before this time; NULL: none
);
-- register: a new name may not equal an existing one after NFKC and case folding.
CREATE INDEX IF NOT EXISTS users_by_name_key ON users (name_key);
-- setrole: the admins left (never demote the last one).
CREATE INDEX IF NOT EXISTS users_by_role ON users (role);

CREATE TABLE IF NOT EXISTS channels (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE COLLATE NOCASE,
    creator_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at TEXT NOT NULL
);
-- deleteaccount: the foreign key's ON DELETE SET NULL finds the account's channels.
CREATE INDEX IF NOT EXISTS channels_by_creator ON channels (creator_id);

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
    source       TEXT NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'discord')),
    edited_timestamp TEXT                      -- NULL until editmessage; same format as timestamp
);
-- getmessagesforeveryone: the public feed, newest first.
CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, id);
-- readmessagesfromchannel (channel mode).
CREATE INDEX IF NOT EXISTS messages_by_channel ON messages (channel_id, id);
-- getmysentmessages.
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (sender_id, id);
-- deleteaccount: the foreign key's ON DELETE SET NULL finds the DMs the account received.
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient_id);

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
-- deleteaccount: the foreign key's ON DELETE SET NULL finds the account's peers' links.
CREATE INDEX IF NOT EXISTS dm_links_by_peer_id ON dm_links (peer_id);

-- Idempotent sends: a client's `nonce` for a message it created, for 24 hours. A repeat of
-- the nonce by the same user returns that message instead of creating another.
CREATE TABLE IF NOT EXISTS nonces (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    nonce      TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,                  -- Unix time
    PRIMARY KEY (user_id, nonce)
) WITHOUT ROWID;
-- deletemessage: the foreign key's ON DELETE CASCADE finds a message's nonce.
CREATE INDEX IF NOT EXISTS nonces_by_message ON nonces (message_id);

-- Discord bridge (SPEC section 6, bot.py).
-- The outbox: one row per post bound for Discord (a text over 2000 characters is several
-- posts), committed with its message. `state`: 'post' (to deliver), 'posted' (Discord has it:
-- its ids are kept so deletemessage and editmessage can reach the copy), 'edit' (a copy whose
-- text is to be replaced by `content`), 'delete' (a copy to delete on Discord), 'failed'
-- (refused for good; never retried). `dest` is the delivery queue:
-- 'channel:<Discord channel id>', 'user:<Discord user id>' (a DM), or 'name:<channel name>'
-- (left by a version before links: resolved through the channel's link, else dropped).
-- `content` is kept only while the post or edit waits, as the bot posts it (the first part
-- starts with `**name**: `).
-- `username`: the Button API sender's name, shown as the display name when the post goes
-- through a channel webhook (NULL: posted by the bot only: DMs, the bot's own replies).
-- `webhook_id`: the webhook that posted the copy (NULL: the bot did). `nonce` makes Discord
-- return the message it already created instead of posting a retry twice. `not_before`:
-- Unix time of the next attempt (backoff).
CREATE TABLE IF NOT EXISTS discord_outbox (
    id                 INTEGER PRIMARY KEY,
    message_id         INTEGER,                -- the Button API message; NULL: the bot's own
    part               INTEGER NOT NULL DEFAULT 0,
    dest               TEXT NOT NULL,
    state              TEXT NOT NULL
                       CHECK (state IN ('post', 'posted', 'edit', 'delete', 'failed')),
    content            TEXT,
    nonce              TEXT NOT NULL,
    discord_channel_id INTEGER,
    discord_message_id INTEGER,
    attempts           INTEGER NOT NULL DEFAULT 0,
    not_before         REAL NOT NULL DEFAULT 0,
    last_error         TEXT,
    created_at         TEXT NOT NULL,
    username           TEXT,
    webhook_id         INTEGER
);
-- Each destination's worker: its oldest row with work left; the destinations with work left.
CREATE INDEX IF NOT EXISTS discord_outbox_due ON discord_outbox (dest, id)
    WHERE state IN ('post', 'edit', 'delete');
-- deletemessage: the Discord copies of a message.
CREATE INDEX IF NOT EXISTS discord_outbox_by_message ON discord_outbox (message_id);

-- Discord users known to the bot: they have sent it a DM. A username can move to another
-- account; the newest sighting wins.
CREATE TABLE IF NOT EXISTS discord_users (
    id       INTEGER PRIMARY KEY,                -- the Discord user id
    username TEXT NOT NULL COLLATE NOCASE,
    seen_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS discord_users_by_name ON discord_users (username, seen_at);

-- Running a community (SPEC section 8).
-- A ban: while it lasts (`until` NULL: until unbanned; else the time it ends, compared with
-- the clock at every lookup, so a timed ban ends by itself, across restarts too) the user's
-- token fails everywhere and their credentials are refused.
CREATE TABLE IF NOT EXISTS bans (
    user_id    INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    reason     TEXT,
    until      TEXT,                             -- same format as messages.timestamp
    created_at TEXT NOT NULL
);

-- Every moderation and administration action, newest last. Names are kept as text: an entry
-- outlives the accounts it names. `actor` is `(console)` for the command line.
CREATE TABLE IF NOT EXISTS audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    message_id INTEGER,
    reason     TEXT,
    until      TEXT,
    timestamp  TEXT NOT NULL
);

-- Invites (BUTTONAPI_REGISTRATION=invite): only a SHA-256 of each code is kept.
CREATE TABLE IF NOT EXISTS invites (
    code_hash  TEXT PRIMARY KEY,
    uses_left  INTEGER NOT NULL CHECK (uses_left >= 0),
    expires    TEXT NOT NULL,
    created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
-- deleteaccount: the foreign key's ON DELETE SET NULL finds the account's invites.
CREATE INDEX IF NOT EXISTS invites_by_creator ON invites (created_by);

-- Discord links (linkchannel): the only way a Button API channel is bridged; one link per
-- channel on each side.
CREATE TABLE IF NOT EXISTS channel_links (
    channel_id         INTEGER PRIMARY KEY REFERENCES channels(id) ON DELETE CASCADE,
    discord_channel_id INTEGER NOT NULL UNIQUE,
    created_at         TEXT NOT NULL
);

-- Counters shared between processes. `external_writes`: bumped by every transaction of the
-- command line (another process, whose writes fire none of the server's cache triggers); the
-- server forgets its caches when it sees it move (db.Database.check_external).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('external_writes', 0);
-- Read markers (SPEC section 10): how far each user has read each conversation. `kind`
-- 'public' (target 0), 'channel' (target: the channel's id) or 'dm' (target: the partner's
-- user id; no foreign key, as target_id names a channel or a user). A marker only moves up.
CREATE TABLE IF NOT EXISTS read_markers (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('public', 'channel', 'dm')),
    target_id  INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, kind, target_id)
) WITHOUT ROWID;
-- The full-text index (tables search_0, search_1, ...) is made by db.SearchIndex.
