// Which /events transitions a REST read already counted.
//
// GET /tasks/stats answers with the Postgres snapshot its counts were read in
// (pg_current_snapshot(): "xmin:xmax:xip,…"). /events sends a transition only
// once every older transaction has ended, so it can arrive after a read that
// saw it committed; its id "<xact>-<history id>" names the transaction, and
// the read counted it exactly when that transaction is visible in the
// snapshot. xid8 values pass 2^53, hence BigInt.

/** "xmin:xmax:xip,…" as {xmin, xmax, xip: Set}, all BigInt; null when absent or malformed. */
export function parseSnapshot(text) {
  const match = /^(\d+):(\d+):([\d,]*)$/.exec(text || "");
  if (!match) return null;
  return {
    xmin: BigInt(match[1]),
    xmax: BigInt(match[2]),
    xip: new Set(match[3] ? match[3].split(",").map((xid) => BigInt(xid)) : []),
  };
}

/**
 * Whether the read of ``snapshot`` already counted the /events transition with
 * SSE ``id`` and ``data``: true or false, or null when the snapshot cannot tell
 * (no snapshot, no place, or a place its own transaction did not write).
 */
export function countedIn(snapshot, id, data) {
  const match = /^(\d+)-\d+$/.exec(id || "");
  if (!snapshot || !match || data.place_is_writer !== true) return null;
  const xact = BigInt(match[1]);
  return xact < snapshot.xmin || (xact < snapshot.xmax && !snapshot.xip.has(xact));
}
