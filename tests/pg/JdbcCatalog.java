// The PostgreSQL JDBC driver (Maven Central) against fleetledger's PostgreSQL protocol, as
// a BI tool uses it on connect: DatabaseMetaData.getTables and getColumns (the driver's
// own pg_catalog queries), then a PreparedStatement with a parameter. Prints one line per
// fact for the Rust test (tests/e2e/postgres.rs) to check against /v1/sql.
//
// usage: java -cp postgresql.jar JdbcCatalog.java HOST PORT USER TOKEN ORG_ID

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Properties;

public class JdbcCatalog {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/fleetledger";
        Properties props = new Properties();
        props.setProperty("user", args[2]);
        props.setProperty("password", args[3]);
        // Server-side prepared statements from the first execution on.
        props.setProperty("prepareThreshold", "1");
        try (Connection c = DriverManager.getConnection(url, props)) {
            DatabaseMetaData meta = c.getMetaData();
            System.out.println("product " + meta.getDatabaseProductName() + " " + meta.getDatabaseProductVersion());
            try (ResultSet t = meta.getTables(null, null, "%", new String[] {"TABLE"})) {
                while (t.next()) {
                    System.out.println("table " + t.getString("TABLE_NAME"));
                }
            }
            try (ResultSet col = meta.getColumns(null, null, "clusters", "%")) {
                while (col.next()) {
                    System.out.println("column " + col.getString("COLUMN_NAME") + " " + col.getString("TYPE_NAME"));
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT count(*) AS n FROM clusters WHERE org_id = ? AND cku_desired >= ?")) {
                for (int round = 0; round < 3; round++) {
                    ps.setString(1, args[4]);
                    ps.setInt(2, 0);
                    try (ResultSet r = ps.executeQuery()) {
                        r.next();
                        System.out.println("count " + r.getLong("n"));
                    }
                }
            }
        }
    }
}
