"""psycopg (PyPI) against fleetledger's PostgreSQL protocol: prepared statements with
parameters, in text and in binary, typed answers. Prints one JSON object for the Rust test
(tests/e2e/postgres.rs) to check against /v1/sql.

usage: psycopg_client.py HOST PORT USER TOKEN CLUSTER_ID
"""

import json
import sys

import psycopg


def main() -> None:
    host, port, user, token, cluster = sys.argv[1:6]
    out = {}
    with psycopg.connect(
        host=host, port=int(port), dbname="fleetledger", user=user, password=token,
        autocommit=True,
    ) as conn:
        out["server_version"] = conn.info.server_version
        # A server-side prepared statement (Parse once, Bind/Execute twice), text format.
        sql = "SELECT cluster_id, org_id, logical_version, cku_desired, updated_at FROM clusters WHERE cluster_id = %s"
        rows = []
        for _ in range(2):
            cur = conn.execute(sql, (cluster,), prepare=True)
            rows = cur.fetchall()
        (cid, org, version, cku, updated) = rows[0]
        out["cluster"] = {
            "cluster_id": cid,
            "org_id": org,
            "logical_version": version,
            "cku_desired": cku,
            # A real datetime with its zone: the column is timestamptz.
            "updated_at": updated.isoformat(),
            "types": [type(v).__name__ for v in rows[0]],
        }
        # The same in binary: parameters and answers in PostgreSQL's binary formats.
        with conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT count(*) AS n, sum(cku_hours) AS h FROM billing_hours WHERE org_id = %s AND cku_hours >= %s",
                (org, 0.0),
            )
            n, h = cur.fetchone()
            out["billing_binary"] = {"n": n, "cku_hours": h}
        # What a statement that would write gets.
        try:
            conn.execute("DELETE FROM clusters WHERE cluster_id = %s", (cluster,))
            out["delete"] = "accepted"
        except psycopg.Error as e:
            out["delete"] = {"sqlstate": e.sqlstate, "message": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
