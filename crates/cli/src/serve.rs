//! `spool serve`: the server, until SIGINT or SIGTERM. SIGHUP reloads the token file.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use spool_server::auth::Authenticator;
use spool_server::{AdvertisedAddress, ServeOptions, TlsConfig};
use tokio::net::TcpListener;

use crate::config::{LogFormat, ServeConfig};

fn init_logs(config: &ServeConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::builder().parse(&config.log.value)?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format.value {
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    Ok(())
}

fn read(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}

fn tls(config: &ServeConfig) -> anyhow::Result<Option<TlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert.value, &config.tls_key.value) else {
        return Ok(None);
    };
    let client_ca_pem = match &config.tls_client_ca.value {
        Some(ca) => Some(read("tls_client_ca", ca)?),
        None => None,
    };
    Ok(Some(TlsConfig {
        cert_pem: read("tls_cert", cert)?,
        key_pem: read("tls_key", key)?,
        client_ca_pem,
    }))
}

/// Raises the open-file soft limit to the hard limit, and logs both: every partition holds
/// files open, and the common soft default of 1,024 runs out at a few hundred partitions.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the open-file limit");
        return;
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    if soft >= hard {
        tracing::info!(open_files_max = soft, "open-file limit (soft and hard)");
        return;
    }
    let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(soft, hard, "open-file limit raised from {soft} to the hard limit {hard}");
    } else {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, soft, hard, "cannot raise the open-file limit to the hard limit");
    }
}

pub(crate) async fn run(config: ServeConfig) -> anyhow::Result<()> {
    init_logs(&config)?;
    raise_open_file_limit();
    let tls = tls(&config)?;
    let tokens = match &config.tokens.value {
        Some(path) => {
            let tokens = Authenticator::load(path).context("tokens")?;
            Some(Arc::new(tokens))
        }
        None => None,
    };
    let listen = config.listen.value;
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let metrics = match config.metrics.value {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .await
                .with_context(|| format!("metrics: cannot listen on {at}"))?;
            let address = listener.local_addr()?;
            tracing::info!(%address, "Prometheus metrics at http://{address}/metrics");
            if !address.ip().is_loopback() && tokens.is_none() {
                tracing::warn!(%address, "the metrics endpoint has no tokens, and names every topic and group to anyone who can reach it (allow_insecure_remote)");
            }
            Some(listener)
        }
        None => None,
    };
    let http = match config.http.value {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .await
                .with_context(|| format!("http: cannot listen on {at}"))?;
            let address = listener.local_addr()?;
            tracing::info!(%address, "browsers: the page at http://{address}/, events under http://{address}/v1/");
            if !address.ip().is_loopback() {
                tracing::warn!(%address, "the browser listener speaks plain HTTP on a non-loopback address (allow_insecure_remote): tokens cross the network in clear");
            }
            Some(listener)
        }
        None => None,
    };
    let kafka = match config.kafka.value {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .await
                .with_context(|| format!("kafka: cannot listen on {at}"))?;
            let address = listener.local_addr()?;
            let advertised = config
                .kafka_advertised
                .value
                .clone()
                .unwrap_or_else(|| AdvertisedAddress::from(address));
            tracing::info!(%address, %advertised, "Kafka clients at {address}, told to connect to {advertised}");
            if !address.ip().is_loopback() && !config.secure() {
                tracing::warn!(%address, "the Kafka listener is on a non-loopback address without both TLS and tokens (allow_insecure_remote): tokens or records cross the network in clear, or anyone who can reach it can read and write every topic");
            }
            Some(listener)
        }
        None => None,
    };
    let data = &config.data.value;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%address, data = %data.display(), tls = tls.is_some(), mutual_tls = config.tls_client_ca.value.is_some(), tokens = tokens.is_some(), "bound to {scheme}://{address}; opening the data directory");
    if tls.is_none() && tokens.is_none() {
        tracing::info!("no TLS and no tokens are configured: listening on loopback only");
    }
    if !address.ip().is_loopback() && !config.secure() {
        tracing::warn!(%address, "listening on a non-loopback address without both TLS and tokens (allow_insecure_remote): anyone who can reach it can read, write and delete every topic");
    }
    let (serving, ready) = tokio::sync::oneshot::channel();
    let human = config.log_format.value == LogFormat::Human;
    let announced = data.display().to_string();
    tokio::spawn(async move {
        // Tests and scripts read this line to find the port when listening on port 0, and
        // to know the server is ready: it comes once recovery is done and health is SERVING.
        if ready.await.is_ok() && human {
            eprintln!("spool: listening on {address}, data in {announced}");
        }
    });
    if let Some(tokens) = &tokens {
        tokio::spawn(reload_on_hangup(tokens.clone()));
    }
    spool_storage::set_direct_writes(config.direct_writes.value);
    let options = ServeOptions {
        tls,
        tokens,
        metrics,
        http,
        http_allowed_origins: config.http_allowed_origins.value.clone(),
        kafka,
        kafka_advertised: config.kafka_advertised.value.clone(),
        serving: Some(serving),
        connection_timeouts: Default::default(),
        advertised: config.advertised.value.clone(),
        partitions_max: config.partitions_max.value,
        cluster: config.cluster()?.map(|options| {
            let peers: Vec<String> =
                options.peers.iter().map(|(id, address)| format!("{id}={address}")).collect();
            tracing::info!(node = options.node_id, peers = %peers.join(","), "a node of a cluster of {}", options.peers.len());
            if address.ip().is_unspecified() && config.advertised.value.is_none() {
                tracing::warn!(%address, "the gRPC listener is bound to a wildcard address and no advertised address is set: clients cannot follow this node's leaders to it; set advertised to this node's HOST:PORT");
            }
            spool_server::ClusterSetup { options, listener: None }
        }),
    };
    spool_server::run(listener, data, options, crate::stop_requested()).await?;
    // One line says so: the human one, or the log's in JSON.
    match config.log_format.value {
        LogFormat::Human => eprintln!("spool: stopped cleanly"),
        LogFormat::Json => tracing::info!("stopped cleanly"),
    }
    Ok(())
}

/// Reloads the token file on every SIGHUP.
async fn reload_on_hangup(tokens: Arc<Authenticator>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::error!("cannot watch SIGHUP; the token file is still reloaded when it changes");
        return;
    };
    while hangups.recv().await.is_some() {
        let reloading = tokens.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(count)) => tracing::info!(tokens = count, "SIGHUP: token file reloaded"),
            Ok(Err(error)) => {
                tracing::error!(%error, "SIGHUP: token file not reloaded: every token is refused until it loads again")
            }
            Err(error) => tracing::error!(%error, "SIGHUP: reloading the token file panicked"),
        }
    }
}
