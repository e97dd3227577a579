-- name: insert_user
-- Register a user; a taken username or email raises a unique violation.
INSERT INTO users (username, email, password_hash, first_name, last_name)
VALUES (%(username)s, %(email)s, %(password_hash)s, %(first_name)s, %(last_name)s)
RETURNING *;

-- name: find_taken_identity
-- Which of a username and an email already belong to someone (case-insensitive).
SELECT lower(username) = lower(%(username)s) AS username_taken,
       lower(email) = lower(%(email)s) AS email_taken
  FROM users
 WHERE lower(username) = lower(%(username)s) OR lower(email) = lower(%(email)s);

-- name: get_user_for_login
-- The active user a login names, by username or email (case-insensitive).
SELECT * FROM users
 WHERE (lower(username) = lower(%(login)s) OR lower(email) = lower(%(login)s))
   AND is_active
 ORDER BY lower(username) = lower(%(login)s) DESC
 LIMIT 1;

-- name: get_user
-- One user by id.
SELECT * FROM users WHERE id = %(user_id)s;

-- name: token_state
-- What decides whether a JWT is still good: its owner and whether its jti was revoked.
SELECT u.id, u.is_admin, u.is_active, u.password_changed_at,
       EXISTS (SELECT 1 FROM token_blocklist b WHERE b.jti = %(jti)s) AS revoked
  FROM users u
 WHERE u.id = %(user_id)s;

-- name: stream_credentials
-- token_state of many credentials at once (user id, access-token jti): the open SSE streams' check.
SELECT b.user_id, b.jti, u.id, u.is_admin, u.is_active, u.password_changed_at,
       EXISTS (SELECT 1 FROM token_blocklist t WHERE t.jti = b.jti) AS revoked
  FROM unnest(%(user_ids)s::bigint[], %(jtis)s::text[]) AS b(user_id, jti)
  LEFT JOIN users u ON u.id = b.user_id;

-- name: revoke_token
-- Put a jti on the blocklist; no row back when it was already there (a reused refresh token).
INSERT INTO token_blocklist (jti, token_type, user_id, expires_at)
VALUES (%(jti)s, %(token_type)s, %(user_id)s, %(expires_at)s)
ON CONFLICT (jti) DO NOTHING
RETURNING jti;

-- name: update_profile
-- Change the given profile fields (NULL keeps the current value).
UPDATE users
   SET email = coalesce(%(email)s, email),
       first_name = coalesce(%(first_name)s, first_name),
       last_name = coalesce(%(last_name)s, last_name),
       updated_at = now()
 WHERE id = %(user_id)s
RETURNING *;

-- name: set_password
-- Store a new password hash; tokens carrying the old password version stop working.
-- Only over the password version the old password was checked against: no row back when
-- another change committed since (it revoked the caller's token, and its password stays).
UPDATE users
   SET password_hash = %(password_hash)s, password_changed_at = clock_timestamp(),
       updated_at = now()
 WHERE id = %(user_id)s AND password_changed_at = %(password_changed_at)s
RETURNING *;

