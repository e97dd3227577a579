-- name: upsert_admin
-- Create an admin, or promote an existing user of that name and reset its password.
INSERT INTO users (username, email, password_hash, is_admin)
VALUES (%(username)s, %(email)s, %(password_hash)s, true)
ON CONFLICT (lower(username)) DO UPDATE
   SET is_admin = true, password_hash = EXCLUDED.password_hash,
       password_changed_at = now(), updated_at = now()
RETURNING id;
