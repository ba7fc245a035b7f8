//! The other hosts' hints (`NOTIFY`, sent by their writers at commit) carried to this
//! host's waiting tasks, on a connection of its own that does nothing but `LISTEN`.
//!
//! While it is connected the hints are complete, and the waiting tasks poll rarely;
//! while it is not (the database restarting, or a proxy in front of it that does not
//! pass `LISTEN` through), they poll often, and nothing depends on a hint arriving.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::store::Wakeups;
use crate::store::wakeups::Hints;

/// How long after losing its connection the listener tries again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Listens until the process ends, reconnecting after each failure.
pub(super) fn spawn(config: Config, wakeups: Arc<Wakeups>) {
    tokio::spawn(async move {
        let mut said = false;
        loop {
            let ended = listen(&config, &wakeups).await;
            wakeups.set_complete(false);
            // Hints may have been missed meanwhile: everyone looks once.
            wakeups.wake_all();
            if !said {
                tracing::info!("not listening for other hosts' changes ({ended}); polling until it can");
                said = true;
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    });
}

/// Connects, listens, and passes each hint for this schema on; returns why it stopped.
async fn listen(config: &Config, wakeups: &Wakeups) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(error) => return error.to_string(),
    };
    let (hints, mut received) = tokio::sync::mpsc::unbounded_channel();
    // The connection's messages (replies and notifications) are read by this task; the
    // client's queries below need it running.
    let reader = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    let _ = hints.send((note.channel().to_owned(), note.payload().to_owned()));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return error.to_string(),
                None => return "the connection closed".to_owned(),
            }
        }
    });
    let setup = async {
        let schema: String = client.query_one("SELECT current_schema()", &[]).await?.get(0);
        client.batch_execute("LISTEN wasaga_events; LISTEN wasaga_plugins").await?;
        Ok::<_, tokio_postgres::Error>(schema)
    };
    let schema = match setup.await {
        Ok(schema) => schema,
        Err(error) => {
            reader.abort();
            return error.to_string();
        }
    };
    wakeups.set_complete(true);
    // Anything committed before the LISTEN took effect sent its hint to nobody.
    wakeups.wake_all();
    tracing::debug!(schema, "listening for other hosts' changes");
    while let Some((channel, payload)) = received.recv().await {
        if payload != schema {
            continue;
        }
        match channel.as_str() {
            "wasaga_events" => wakeups.wake(Hints { events: true, plugins: false }),
            "wasaga_plugins" => wakeups.wake(Hints { events: false, plugins: true }),
            _ => {}
        }
    }
    drop(client);
    reader.await.unwrap_or_else(|error| error.to_string())
}
