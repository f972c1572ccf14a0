//! Given events, then the read model: a projection run by the real runner on a fresh database.

use eventsource_core::{
    AppendResult, CommandContext, DomainEvent, EncodeError, EventAppender, ExpectedVersion,
    FeedPosition, NewEvent, StoreError, StreamId,
};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool};

use super::TestDatabase;
use crate::projection::{Projection, ProjectionError, ProjectionRunner, RunnerOptions};
use crate::store::PostgresStore;

/// A test of one projection: events appended through the store (`given`), the real
/// [`ProjectionRunner`] run until it has applied them (`run`), then queries of the read model
/// (`query`, or [`ProjectionTest::pool`] for anything else). Each test has its own fresh,
/// migrated [`TestDatabase`]; [`ProjectionTest::finish`] drops it (a test that panics before
/// leaves it to the clean-up of stale test databases, hours later).
///
/// Typed projections (`type Event = Envelope<E>`) and raw ones (`RecordedEvent`) work alike.
/// `given` and `run` can alternate, to test a projection that catches up in steps.
///
/// ```
/// use eventsource_core::testing::counter::{CounterEvent, Incremented};
/// use eventsource_core::{BoxError, Envelope, StreamId};
/// use eventsource_postgres::projection::Projection;
/// use eventsource_postgres::testing::ProjectionTest;
/// use eventsource_postgres::{sqlx, PgConnection};
///
/// struct Total;
///
/// #[async_trait::async_trait]
/// impl Projection for Total {
///     type Event = Envelope<CounterEvent>;
///     type Error = BoxError;
///     fn name(&self) -> &str { "total" }
///     fn tables(&self) -> &[&str] { &["total"] }
///     async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
///         sqlx::query("CREATE TABLE total (stream text PRIMARY KEY, sum bigint NOT NULL)")
///             .execute(&mut *tx).await?;
///         Ok(())
///     }
///     async fn handle(&self, tx: &mut PgConnection, events: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
///         for e in events {
///             let CounterEvent::Incremented(Incremented { by }) = e.event;
///             sqlx::query("INSERT INTO total VALUES ($1, $2)
///                          ON CONFLICT (stream) DO UPDATE SET sum = total.sum + $2")
///                 .bind(e.stream_id.to_string()).bind(i64::from(by))
///                 .execute(&mut *tx).await?;
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let test = ProjectionTest::new(Total).await?;
/// let id = StreamId::new("counter", "1")?;
/// test.given(&id, [CounterEvent::Incremented(Incremented { by: 2 }),
///                  CounterEvent::Incremented(Incremented { by: 3 })]).await?;
/// test.run().await?;
/// let rows: Vec<(String, i64)> = test.query("SELECT stream, sum FROM total").await?;
/// assert_eq!(rows, [("counter-1".to_owned(), 5)]);
/// test.finish().await?;
/// # Ok(()) }
/// ```
pub struct ProjectionTest<P: Projection> {
    database: TestDatabase,
    store: PostgresStore,
    runner: ProjectionRunner<P>,
}

/// Why a step of a [`ProjectionTest`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionTestError {
    /// The test database or the store failed (creating, migrating, appending).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A given event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The runner stopped: the projection's setup or handler failed (its own error is the
    /// `source()`), or the runner did.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// A query of the read model failed.
    #[error("query of the read model of projection `{projection}` failed: {source}")]
    Query {
        /// The projection.
        projection: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl<P: Projection> ProjectionTest<P> {
    /// A fresh, migrated database (see [`TestDatabase::create`]) and a runner of `projection`
    /// on it, with default [`RunnerOptions`]. Nothing runs until [`ProjectionTest::run`].
    pub async fn new(projection: P) -> Result<Self, ProjectionTestError> {
        let database = TestDatabase::create().await?;
        let store = match database.store().await {
            Ok(store) => store,
            Err(error) => {
                let _ = database.drop_database().await;
                return Err(error.into());
            }
        };
        let runner = ProjectionRunner::new(store.clone(), projection);
        Ok(Self {
            database,
            store,
            runner,
        })
    }

    /// Runs the projection with `options` (a failure policy to test, small batches).
    pub fn with_runner_options(mut self, options: RunnerOptions) -> Self {
        self.runner = self.runner.with_options(options);
        self
    }

    /// Appends `events` to `stream` through the store (any expected version), with the metadata
    /// of a new [`CommandContext`] (a command id as causation, a correlation id), as a command
    /// would. Returns the stream's version and the events' feed positions.
    pub async fn given<E: DomainEvent>(
        &self,
        stream: &StreamId,
        events: impl IntoIterator<Item = E>,
    ) -> Result<AppendResult, ProjectionTestError> {
        self.given_with(stream, events, &CommandContext::new())
            .await
    }

    /// [`ProjectionTest::given`] with the metadata of `ctx` (an actor, a correlation id,
    /// headers the projection reads).
    pub async fn given_with<E: DomainEvent>(
        &self,
        stream: &StreamId,
        events: impl IntoIterator<Item = E>,
        ctx: &CommandContext,
    ) -> Result<AppendResult, ProjectionTestError> {
        let metadata = ctx.metadata();
        let batch = events
            .into_iter()
            .map(|e| NewEvent::from_domain(&e, metadata.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        self.given_raw(stream, batch).await
    }

    /// Appends events as they are (any type name, payload and metadata, even ones the
    /// projection cannot decode, to test its failure policy).
    pub async fn given_raw(
        &self,
        stream: &StreamId,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ProjectionTestError> {
        Ok(self
            .store
            .append(stream, ExpectedVersion::Any, events)
            .await?)
    }

    /// Runs the real runner until it has applied every event appended so far (its setup on the
    /// first run), and returns its checkpoint: the read model then reflects every given event.
    /// A handler that keeps failing stops it per its [`RunnerOptions`], with the error here.
    pub async fn run(&self) -> Result<FeedPosition, ProjectionTestError> {
        Ok(self.runner.run_until_caught_up().await?)
    }

    /// Runs `sql` (without parameters) against the read model and returns its rows as `T` (a
    /// tuple, or a type deriving `sqlx::FromRow`). Unqualified table names are looked up in the
    /// projection's schema first, as its handler writes them.
    pub async fn query<T>(&self, sql: &str) -> Result<Vec<T>, ProjectionTestError>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let failed = |source| ProjectionTestError::Query {
            projection: self.projection().name().to_owned(),
            source,
        };
        let mut tx = self.store.pool().begin().await.map_err(failed)?;
        let search_path = format!("\"{}\", public", self.projection().schema());
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(search_path)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let rows = sqlx::query_as::<_, T>(sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
        tx.rollback().await.map_err(failed)?;
        Ok(rows)
    }

    /// The test database's pool, for queries that [`ProjectionTest::query`] does not cover
    /// (parameters, other schemas).
    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The store the events are appended to and the runner reads.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// The runner (its status, dead letters by its projection's name).
    pub fn runner(&self) -> &ProjectionRunner<P> {
        &self.runner
    }

    /// The projection under test.
    pub fn projection(&self) -> &P {
        self.runner.projection()
    }

    /// The test database.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// Closes the store's connections and drops the test database.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.store.close().await;
        self.database.drop_database().await
    }
}

impl<P: Projection> std::fmt::Debug for ProjectionTest<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionTest")
            .field("projection", &self.projection().name())
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}
