//! The store contract suite against the in-memory store.

use async_trait::async_trait;
use eventsource_core::testing::contract::StoreFactory;
use eventsource_core::{InMemoryStore, Limits};

struct Memory;

#[async_trait]
impl StoreFactory for Memory {
    type Store = InMemoryStore;
    async fn store(&self, limits: Limits) -> InMemoryStore {
        InMemoryStore::with_limits(limits)
    }
}

eventsource_core::store_contract_tests!(Memory);
