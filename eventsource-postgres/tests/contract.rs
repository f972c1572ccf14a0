//! The store contract suite against PostgreSQL, each check in its own database.

use async_trait::async_trait;
use eventsource_core::testing::contract::StoreFactory;
use eventsource_core::Limits;
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;

struct Postgres;

#[async_trait]
impl StoreFactory for Postgres {
    type Store = PostgresStore;
    async fn store(&self, limits: Limits) -> PostgresStore {
        let db = TestDatabase::create()
            .await
            .expect("create a test database");
        db.store()
            .await
            .expect("migrated store")
            .with_limits(limits)
    }
}

eventsource_core::store_contract_tests!(Postgres);
