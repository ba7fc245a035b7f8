//! The PostgreSQL writer's probe of a failing store (see `store/health.rs`).

use tokio_postgres::Config;

use super::cache::RecordCache;
use super::conn::Conn;
use crate::store::health::Health;

/// While the store fails, a commit of one row every second tells when it writes again.
pub(super) async fn probe(conn: &mut Conn, config: &Config, health: &Health, cache: &RecordCache) {
    if conn.client.is_closed() {
        match super::writer::open(config).await {
            Ok(fresh) => {
                cache.clear();
                *conn = fresh;
            }
            Err(error) => return health.failed(&error.to_string()),
        }
    }
    let sql = "INSERT INTO probes (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at";
    match conn.execute(sql, &[&crate::clock::now_ms()]).await {
        Ok(_) => health.committed(),
        Err(error) => health.failed(&error.to_string()),
    }
}
