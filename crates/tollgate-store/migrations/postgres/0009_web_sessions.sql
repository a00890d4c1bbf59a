-- tollgate schema for PostgreSQL, version 9 (SQLite's version 13): the billing dashboard's sign-in. A portal link is a
-- one-time sign-in link an operator minted for a customer (only the SHA-256 of its token is
-- kept); redeeming it marks it used and starts a session in the same commit. A web session
-- is a browser signed in to an account's dashboard (`account` set) or to the operator console
-- (`account` NULL), found by the SHA-256 of its cookie; `key_id` is the key it signed in with
-- (NULL for a portal link), so revoking the key ends the session; `csrf` is the token every
-- form of the session carries.
CREATE TABLE portal_links (
    token_sha256 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    account      TEXT COLLATE "C" NOT NULL,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    used_at      BIGINT
);

CREATE TABLE web_sessions (
    id_sha256  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    account    TEXT,
    key_id     TEXT,
    csrf       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    ended_at   BIGINT
);

-- An account's sessions, which staff end all at once.
CREATE INDEX web_sessions_by_account ON web_sessions (account);
