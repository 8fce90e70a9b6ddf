//! `spool serve`'s settings: every one has a flag, an environment variable and a key in an
//! optional TOML file (`--config FILE`).
//!
//! Precedence, highest first: **flag > environment variable > config file > default**. An
//! unknown key, a value that does not parse, or settings that contradict each other stop the
//! start with a message naming the setting; nothing is adjusted silently. Relative paths
//! are relative to the working directory, wherever they are written.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, ValueEnum};
use serde::Deserialize;
use spool_server::AdvertisedAddress;
use spool_server::cluster::{ClusterOptions, PeerTls};
use spool_server::limits::PARTITIONS_TOTAL_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// The log filter without RUST_LOG or `log`: openraft warns at every election (votes that
/// arrive after the vote changed), which on a cluster node is routine, not a warning.
const LOG_DEFAULT: &str = "info,openraft=error";

/// The flags of `spool serve`; each also reads its environment variable.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML file with any of the settings below, by their long names with `_` for `-`.
    #[arg(long, env = "SPOOL_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the effective configuration, with where each value came from, and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// Where topics are stored [default: ./data].
    #[arg(long, env = "SPOOL_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// The address to listen on; port 0 picks a free port [default: 127.0.0.1:7070].
    #[arg(long, env = "SPOOL_LISTEN", value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (plain HTTP, and it names every
    /// topic and group: loopback only unless allow_insecure_remote; with tokens, a scrape
    /// needs a token granted `metrics = true`) [default: off].
    #[arg(long, env = "SPOOL_METRICS", value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
    /// Serve browsers at http://IP:PORT/: Server-Sent Events, WebSocket, HTTP POST and a
    /// page to watch and publish events. Plain HTTP: loopback only unless
    /// allow_insecure_remote [default: off].
    #[arg(long, env = "SPOOL_HTTP", value_name = "IP:PORT")]
    http: Option<SocketAddr>,
    /// Origins besides the browser listener's own (`https://events.example.com`, for a page
    /// behind a TLS-terminating proxy) whose pages may post and open WebSockets there, and
    /// whose host names it answers; comma-separated [default: none].
    #[arg(
        long = "http-allowed-origin",
        env = "SPOOL_HTTP_ALLOWED_ORIGINS",
        value_name = "URL",
        value_delimiter = ','
    )]
    http_allowed_origins: Option<Vec<String>>,
    /// Serve Kafka clients at IP:PORT (Kafka's wire protocol: produce, idempotent too, fetch,
    /// metadata, offsets and topic administration; see docs/kafka.md). It takes the server's
    /// TLS, and with tokens clients authenticate with SASL/PLAIN, a token as the password.
    /// Loopback only unless the server has both TLS and tokens, or allow_insecure_remote
    /// [default: off].
    #[arg(long, env = "SPOOL_KAFKA", value_name = "IP:PORT")]
    kafka: Option<SocketAddr>,
    /// The HOST:PORT Kafka clients are told to connect to (Metadata's broker address)
    /// [default: the address --kafka is bound to].
    #[arg(long, env = "SPOOL_KAFKA_ADVERTISED", value_name = "HOST:PORT")]
    kafka_advertised: Option<AdvertisedAddress>,
    /// The log filter, as in RUST_LOG (`info`, `spool_server=debug,warn`, ...)
    /// [default: RUST_LOG if set, else info, with openraft's own lines from error up].
    #[arg(long, env = "SPOOL_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// How log lines are written [default: human].
    #[arg(long, env = "SPOOL_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// The server's TLS certificate chain (PEM); with --tls-key, the listener speaks TLS.
    #[arg(long, env = "SPOOL_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long, env = "SPOOL_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "SPOOL_TLS_CLIENT_CA", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// The token file (TOML): bearer tokens, stored as SHA-256 digests, and their grants.
    /// Reloaded when it changes and on SIGHUP.
    #[arg(long, env = "SPOOL_TOKENS", value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Allow listening on a non-loopback address without both TLS and tokens (a warning is
    /// printed) [default: false].
    #[arg(long, env = "SPOOL_ALLOW_INSECURE_REMOTE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_insecure_remote: Option<bool>,
    /// The most partitions over all topics (1 to 1000000); a create past it is refused
    /// [default: sized from the machine: one open file per partition beside those kept for
    /// connections and sealed segments, or 1 MiB of memory per partition, whichever allows
    /// fewer].
    #[arg(long, env = "SPOOL_PARTITIONS_MAX", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(PARTITIONS_TOTAL_MAX)))]
    partitions_max: Option<u32>,
    /// Write heavy appends of fsync `always` topics (256 KiB at once or more) past the page
    /// cache (`O_DIRECT`), where the file system takes it; false writes every append through
    /// the page cache [default: true].
    #[arg(long, env = "SPOOL_DIRECT_WRITES", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    direct_writes: Option<bool>,
    /// This node's id in a cluster (with --peers); a topic's partitions are then replicated
    /// on 3 nodes, or on every node of a smaller cluster, unless it is created with another
    /// replication factor [default: a single node].
    #[arg(long, env = "SPOOL_NODE_ID", value_name = "ID")]
    node_id: Option<u64>,
    /// Every node of the cluster, this one too, as ID=IP:PORT of its peer listener (Raft
    /// traffic between nodes; loopback only unless the peer TLS settings are set),
    /// comma-separated [default: a single node].
    #[arg(long, env = "SPOOL_PEERS", value_name = "ID=IP:PORT,...")]
    peers: Option<String>,
    /// The HOST:PORT clients are told to reach this node's gRPC listener at, in a cluster:
    /// where a partition's leader serves (producers follow it) and where a group's
    /// coordinator is. Set it when --listen is a wildcard such as 0.0.0.0:7070, which no
    /// client can connect to [default: the address --listen is bound to].
    #[arg(long, env = "SPOOL_ADVERTISED", value_name = "HOST:PORT")]
    advertised: Option<AdvertisedAddress>,
    /// This node's certificate chain (PEM) for mutual TLS between nodes, with
    /// --peer-tls-key and --peer-tls-ca: it must be signed by that CA and name this node's
    /// peer IP address [default: plain TCP, on loopback only].
    #[arg(long, env = "SPOOL_PEER_TLS_CERT", value_name = "FILE")]
    peer_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM) for mutual TLS between nodes.
    #[arg(long, env = "SPOOL_PEER_TLS_KEY", value_name = "FILE")]
    peer_tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed every node's peer certificate: only its holders are nodes.
    #[arg(long, env = "SPOOL_PEER_TLS_CA", value_name = "FILE")]
    peer_tls_ca: Option<PathBuf>,
    /// That CA's certificate revocation list (PEM), with the peer TLS settings: a node whose
    /// certificate it lists is refused, both ways. Read again whenever the file changes
    /// [default: none revoked].
    #[arg(long, env = "SPOOL_PEER_TLS_CRL", value_name = "FILE")]
    peer_tls_crl: Option<PathBuf>,
    /// In a cluster: hand each partition this node leads back to its preferred leader once
    /// that node is back and caught up, so leaders spread as they were placed; false keeps
    /// leaders where elections put them until Kafka's ElectLeaders moves them [default: true].
    #[arg(long, env = "SPOOL_HAND_BACK_LEADERS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    hand_back_leaders: Option<bool>,
}

/// The config file's `[cluster]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFileSettings {
    node_id: Option<u64>,
    /// `["1=127.0.0.1:7071", ...]`
    peers: Option<Vec<String>>,
    advertised: Option<String>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    peer_tls_crl: Option<PathBuf>,
    hand_back_leaders: Option<bool>,
}

/// The config file's keys: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    http: Option<SocketAddr>,
    http_allowed_origins: Option<Vec<String>>,
    kafka: Option<SocketAddr>,
    kafka_advertised: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tokens: Option<PathBuf>,
    allow_insecure_remote: Option<bool>,
    partitions_max: Option<u32>,
    direct_writes: Option<bool>,
    cluster: Option<ClusterFileSettings>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Flag,
    Environment,
    File,
    Default,
    NotSet,
}

/// One setting's effective value and its source.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) source: Source,
}

/// The effective settings of `spool serve`.
#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub(crate) data: Setting<PathBuf>,
    pub(crate) listen: Setting<SocketAddr>,
    pub(crate) metrics: Setting<Option<SocketAddr>>,
    pub(crate) http: Setting<Option<SocketAddr>>,
    pub(crate) http_allowed_origins: Setting<Vec<String>>,
    pub(crate) kafka: Setting<Option<SocketAddr>>,
    pub(crate) kafka_advertised: Setting<Option<AdvertisedAddress>>,
    pub(crate) log: Setting<String>,
    pub(crate) log_format: Setting<LogFormat>,
    pub(crate) tls_cert: Setting<Option<PathBuf>>,
    pub(crate) tls_key: Setting<Option<PathBuf>>,
    pub(crate) tls_client_ca: Setting<Option<PathBuf>>,
    pub(crate) tokens: Setting<Option<PathBuf>>,
    pub(crate) allow_insecure_remote: Setting<bool>,
    /// `None`: sized from the machine.
    pub(crate) partitions_max: Setting<Option<u32>>,
    pub(crate) direct_writes: Setting<bool>,
    pub(crate) node_id: Setting<Option<u64>>,
    /// As `--peers` takes them.
    pub(crate) peers: Setting<Option<String>>,
    pub(crate) advertised: Setting<Option<AdvertisedAddress>>,
    pub(crate) peer_tls_cert: Setting<Option<PathBuf>>,
    pub(crate) peer_tls_key: Setting<Option<PathBuf>>,
    pub(crate) peer_tls_ca: Setting<Option<PathBuf>>,
    pub(crate) peer_tls_crl: Setting<Option<PathBuf>>,
    pub(crate) hand_back_leaders: Setting<bool>,
    pub(crate) file: Option<PathBuf>,
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// Picks flag or environment (clap already chose between them), then the file, then the
/// default.
fn pick<T>(
    matches: &ArgMatches,
    id: &str,
    given: Option<T>,
    file: Option<T>,
    default: Option<T>,
) -> Setting<Option<T>> {
    if let Some(value) = given {
        let source = match matches.value_source(id) {
            Some(ValueSource::EnvVariable) => Source::Environment,
            _ => Source::Flag,
        };
        return Setting { value: Some(value), source };
    }
    if let Some(value) = file {
        return Setting { value: Some(value), source: Source::File };
    }
    match default {
        Some(value) => Setting { value: Some(value), source: Source::Default },
        None => Setting { value: None, source: Source::NotSet },
    }
}

fn required<T>(setting: Setting<Option<T>>) -> Setting<T> {
    Setting { value: setting.value.expect("a setting with a default"), source: setting.source }
}

impl ServeConfig {
    /// Resolves the settings; `matches` are `spool serve`'s, to tell flags from environment.
    pub(crate) fn resolve(args: ServeArgs, matches: &ArgMatches) -> anyhow::Result<ServeConfig> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let log_default = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
        let cluster_file = file.cluster.unwrap_or_default();
        let config = ServeConfig {
            data: required(pick(
                matches,
                "data",
                args.data,
                file.data,
                Some(PathBuf::from("./data")),
            )),
            listen: required(pick(
                matches,
                "listen",
                args.listen,
                file.listen,
                Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            )),
            metrics: pick(matches, "metrics", args.metrics, file.metrics, None),
            http: pick(matches, "http", args.http, file.http, None),
            http_allowed_origins: required(pick(
                matches,
                "http_allowed_origins",
                args.http_allowed_origins,
                file.http_allowed_origins,
                Some(Vec::new()),
            )),
            kafka: pick(matches, "kafka", args.kafka, file.kafka, None),
            kafka_advertised: pick(
                matches,
                "kafka_advertised",
                args.kafka_advertised,
                file.kafka_advertised
                    .map(|text| text.parse::<AdvertisedAddress>())
                    .transpose()
                    .map_err(|reason| anyhow::anyhow!("kafka_advertised: {reason}"))?,
                None,
            ),
            log: required(pick(
                matches,
                "log",
                args.log,
                file.log,
                Some(log_default.unwrap_or_else(|| LOG_DEFAULT.to_owned())),
            )),
            log_format: required(pick(
                matches,
                "log_format",
                args.log_format,
                file.log_format,
                Some(LogFormat::Human),
            )),
            tls_cert: pick(matches, "tls_cert", args.tls_cert, file.tls_cert, None),
            tls_key: pick(matches, "tls_key", args.tls_key, file.tls_key, None),
            tls_client_ca: pick(
                matches,
                "tls_client_ca",
                args.tls_client_ca,
                file.tls_client_ca,
                None,
            ),
            tokens: pick(matches, "tokens", args.tokens, file.tokens, None),
            allow_insecure_remote: required(pick(
                matches,
                "allow_insecure_remote",
                args.allow_insecure_remote,
                file.allow_insecure_remote,
                Some(false),
            )),
            partitions_max: pick(
                matches,
                "partitions_max",
                args.partitions_max,
                file.partitions_max,
                None,
            ),
            direct_writes: required(pick(
                matches,
                "direct_writes",
                args.direct_writes,
                file.direct_writes,
                Some(true),
            )),
            node_id: pick(matches, "node_id", args.node_id, cluster_file.node_id, None),
            peers: pick(
                matches,
                "peers",
                args.peers,
                cluster_file.peers.map(|peers| peers.join(",")),
                None,
            ),
            advertised: pick(
                matches,
                "advertised",
                args.advertised,
                cluster_file
                    .advertised
                    .map(|text| text.parse::<AdvertisedAddress>())
                    .transpose()
                    .map_err(|reason| anyhow::anyhow!("advertised: {reason}"))?,
                None,
            ),
            peer_tls_cert: pick(
                matches,
                "peer_tls_cert",
                args.peer_tls_cert,
                cluster_file.peer_tls_cert,
                None,
            ),
            peer_tls_key: pick(
                matches,
                "peer_tls_key",
                args.peer_tls_key,
                cluster_file.peer_tls_key,
                None,
            ),
            peer_tls_ca: pick(
                matches,
                "peer_tls_ca",
                args.peer_tls_ca,
                cluster_file.peer_tls_ca,
                None,
            ),
            peer_tls_crl: pick(
                matches,
                "peer_tls_crl",
                args.peer_tls_crl,
                cluster_file.peer_tls_crl,
                None,
            ),
            hand_back_leaders: required(pick(
                matches,
                "hand_back_leaders",
                args.hand_back_leaders,
                cluster_file.hand_back_leaders,
                Some(true),
            )),
            file: args.config,
        };
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that contradict each other.
    fn check(&self) -> anyhow::Result<()> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.log.value)
            .with_context(|| format!("log: {:?} is not a log filter", self.log.value))?;
        if let Some(max) = self.partitions_max.value
            && !(1..=PARTITIONS_TOTAL_MAX).contains(&max)
        {
            bail!("partitions_max: {max} is outside 1..={PARTITIONS_TOTAL_MAX}");
        }
        match (&self.tls_cert.value, &self.tls_key.value) {
            (Some(_), None) => bail!("tls_cert is set but tls_key is not: set both, or neither"),
            (None, Some(_)) => bail!("tls_key is set but tls_cert is not: set both, or neither"),
            _ => {}
        }
        if self.tls_client_ca.value.is_some() && self.tls_cert.value.is_none() {
            bail!("tls_client_ca (mutual TLS) needs tls_cert and tls_key");
        }
        if !self.secure()
            && !self.listen.value.ip().is_loopback()
            && !self.allow_insecure_remote.value
        {
            bail!(
                "listen: {} is not a loopback address, and the server is not secured (it needs both TLS, \
                 with tls_cert and tls_key, and tokens): secure it, listen on 127.0.0.1, or set \
                 allow_insecure_remote to accept the risk",
                self.listen.value
            );
        }
        // The browser listener has no TLS of its own, so even a secured server keeps it on
        // loopback (behind a TLS-terminating proxy) unless the risk is accepted.
        if let Some(http) = self.http.value
            && !http.ip().is_loopback()
            && !self.allow_insecure_remote.value
        {
            bail!(
                "http: {http} is not a loopback address, and the browser listener speaks plain HTTP \
                 (tokens would cross the network in clear): listen on 127.0.0.1 behind a \
                 TLS-terminating proxy, or set allow_insecure_remote to accept the risk"
            );
        }
        // The metrics endpoint speaks plain HTTP and names every topic and group.
        if let Some(metrics) = self.metrics.value
            && !metrics.ip().is_loopback()
            && !self.allow_insecure_remote.value
        {
            bail!(
                "metrics: {metrics} is not a loopback address, and the metrics endpoint speaks plain \
                 HTTP (a token would cross the network in clear) and names every topic and group: \
                 listen on 127.0.0.1 (scrape through a proxy or an agent on this machine), or set \
                 allow_insecure_remote to accept the risk"
            );
        }
        // The Kafka listener takes the server's TLS and tokens (SASL/PLAIN): the gRPC
        // listener's rule.
        if let Some(kafka) = self.kafka.value
            && !self.secure()
            && !kafka.ip().is_loopback()
            && !self.allow_insecure_remote.value
        {
            bail!(
                "kafka: {kafka} is not a loopback address, and the server is not secured (the \
                 Kafka listener needs both TLS, with tls_cert and tls_key, and tokens, which \
                 clients send as their SASL/PLAIN password): secure it, listen on 127.0.0.1, or \
                 set allow_insecure_remote to accept the risk"
            );
        }
        self.cluster()?;
        if self.kafka_advertised.value.is_some() && self.kafka.value.is_none() {
            bail!("kafka_advertised is set but kafka is not: set kafka to serve Kafka clients");
        }
        for origin in &self.http_allowed_origins.value {
            spool_server::check_allowed_origin(origin)
                .map_err(|reason| anyhow::anyhow!("http_allowed_origins: {reason}"))?;
        }
        Ok(())
    }

    /// This node's place in a cluster, checked; `None` for a single node.
    pub(crate) fn cluster(&self) -> anyhow::Result<Option<ClusterOptions>> {
        let (node_id, peers) = match (self.node_id.value, &self.peers.value) {
            (None, None) if self.advertised.value.is_some() => bail!(
                "advertised is set but node_id and peers are not: only a cluster's nodes tell \
                 clients where a node serves"
            ),
            (None, None) => return Ok(None),
            (Some(_), None) => bail!("node_id is set but peers is not: a cluster needs both"),
            (None, Some(_)) => bail!("peers is set but node_id is not: a cluster needs both"),
            (Some(node_id), Some(peers)) => (node_id, peers),
        };
        let peers = ClusterOptions::parse_peers(peers).context("peers")?;
        if let Some(advertised) = &self.advertised.value
            && advertised.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
        {
            bail!(
                "advertised: {advertised} is a wildcard address, which no client can connect \
                 to: advertise this node's host name or IP address"
            );
        }
        let tls = self.peer_tls()?;
        let mut options = ClusterOptions::new(node_id, &peers, tls).context("cluster")?;
        options.hand_back_leaders = self.hand_back_leaders.value;
        if options.peers.values().any(|peer| *peer == self.listen.value) {
            bail!("cluster: a peer address is also the gRPC listener's ({})", self.listen.value);
        }
        if let Some(kafka) =
            self.kafka.value.filter(|kafka| options.peers.values().any(|p| p == kafka))
        {
            bail!("cluster: a peer address is also the Kafka listener's ({kafka})");
        }
        Ok(Some(options))
    }

    /// The peer listener's mutual TLS, read from its three files; `None` when none is set.
    fn peer_tls(&self) -> anyhow::Result<Option<PeerTls>> {
        let files = [&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca];
        match files.iter().filter(|file| file.value.is_some()).count() {
            0 if self.peer_tls_crl.value.is_some() => bail!(
                "peer_tls_crl revokes peer certificates, so it needs peer TLS: set \
                 peer_tls_cert, peer_tls_key and peer_tls_ca too"
            ),
            0 => return Ok(None),
            3 => {}
            _ => bail!(
                "peer_tls_cert, peer_tls_key and peer_tls_ca go together: set all three (mutual \
                 TLS between nodes), or none (a cluster on loopback)"
            ),
        }
        let read = |name: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("{name}: cannot read {}", path.display()))
        };
        let set = |file: &Setting<Option<PathBuf>>| file.value.clone().expect("all three are set");
        Ok(Some(PeerTls {
            cert_pem: read("peer_tls_cert", &set(&self.peer_tls_cert))?,
            key_pem: read("peer_tls_key", &set(&self.peer_tls_key))?,
            ca_pem: read("peer_tls_ca", &set(&self.peer_tls_ca))?,
            crl_pem: match &self.peer_tls_crl.value {
                Some(path) => Some(read("peer_tls_crl", path)?),
                None => None,
            },
            crl_path: self.peer_tls_crl.value.clone(),
        }))
    }

    /// TLS and tokens are both configured.
    pub(crate) fn secure(&self) -> bool {
        self.tls_cert.value.is_some() && self.tokens.value.is_some()
    }

    /// The effective configuration as a TOML file that `--config` accepts, each line saying
    /// where its value came from.
    pub(crate) fn to_toml(&self) -> String {
        fn source(source: Source) -> &'static str {
            match source {
                Source::Flag => "flag",
                Source::Environment => "environment",
                Source::File => "config file",
                Source::Default => "default",
                Source::NotSet => "not set",
            }
        }
        fn quoted(value: &str) -> String {
            toml::Value::String(value.to_owned()).to_string()
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# spool serve: effective configuration (precedence: flag > environment > config file > default)"
        );
        if let Some(file) = &self.file {
            let _ = writeln!(out, "# config file: {}", file.display());
        }
        let mut line = |key: &str, value: Option<String>, from: Source| match value {
            Some(value) => {
                let _ = writeln!(out, "{key} = {value}  # {}", source(from));
            }
            None => {
                let _ = writeln!(out, "# {key} =  # {}", source(from));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| quoted(&p.display().to_string()));
        line("data", Some(quoted(&self.data.value.display().to_string())), self.data.source);
        line("listen", Some(quoted(&self.listen.value.to_string())), self.listen.source);
        line("metrics", self.metrics.value.map(|a| quoted(&a.to_string())), self.metrics.source);
        line("http", self.http.value.map(|a| quoted(&a.to_string())), self.http.source);
        let origins: Vec<String> =
            self.http_allowed_origins.value.iter().map(|o| quoted(o)).collect();
        line(
            "http_allowed_origins",
            Some(format!("[{}]", origins.join(", "))),
            self.http_allowed_origins.source,
        );
        line("kafka", self.kafka.value.map(|a| quoted(&a.to_string())), self.kafka.source);
        line(
            "kafka_advertised",
            self.kafka_advertised.value.as_ref().map(|a| quoted(&a.to_string())),
            self.kafka_advertised.source,
        );
        line("log", Some(quoted(&self.log.value)), self.log.source);
        let format = match self.log_format.value {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        };
        line("log_format", Some(quoted(format)), self.log_format.source);
        line("tls_cert", path(&self.tls_cert.value), self.tls_cert.source);
        line("tls_key", path(&self.tls_key.value), self.tls_key.source);
        line("tls_client_ca", path(&self.tls_client_ca.value), self.tls_client_ca.source);
        line("tokens", path(&self.tokens.value), self.tokens.source);
        line(
            "allow_insecure_remote",
            Some(self.allow_insecure_remote.value.to_string()),
            self.allow_insecure_remote.source,
        );
        line(
            "partitions_max",
            self.partitions_max.value.map(|max| max.to_string()),
            self.partitions_max.source,
        );
        line(
            "direct_writes",
            Some(self.direct_writes.value.to_string()),
            self.direct_writes.source,
        );
        let _ = writeln!(out, "[cluster]");
        let peers = self.peers.value.as_ref().map(|peers| {
            let quoted: Vec<String> =
                peers.split(',').map(str::trim).filter(|p| !p.is_empty()).map(quoted).collect();
            format!("[{}]", quoted.join(", "))
        });
        let mut line = |key: &str, value: Option<String>, from: Source| match value {
            Some(value) => {
                let _ = writeln!(out, "{key} = {value}  # {}", source(from));
            }
            None => {
                let _ = writeln!(out, "# {key} =  # {}", source(from));
            }
        };
        line("node_id", self.node_id.value.map(|id| id.to_string()), self.node_id.source);
        line("peers", peers, self.peers.source);
        line(
            "advertised",
            self.advertised.value.as_ref().map(|a| quoted(&a.to_string())),
            self.advertised.source,
        );
        line("peer_tls_cert", path(&self.peer_tls_cert.value), self.peer_tls_cert.source);
        line("peer_tls_key", path(&self.peer_tls_key.value), self.peer_tls_key.source);
        line("peer_tls_ca", path(&self.peer_tls_ca.value), self.peer_tls_ca.source);
        line("peer_tls_crl", path(&self.peer_tls_crl.value), self.peer_tls_crl.source);
        line(
            "hand_back_leaders",
            Some(self.hand_back_leaders.value.to_string()),
            self.hand_back_leaders.source,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let matches = Serve::command().try_get_matches_from(args)?;
        let serve = Serve::from_arg_matches(&matches)?;
        ServeConfig::resolve(serve.args, &matches)
    }

    #[test]
    fn a_cluster_needs_both_settings_and_a_configuration_that_can_work() {
        assert_eq!(resolve(&["serve"]).unwrap().cluster().unwrap(), None);
        let peers = "1=127.0.0.1:7071,2=127.0.0.2:7071,3=127.0.0.3:7071";
        let config = resolve(&["serve", "--node-id", "2", "--peers", peers]).unwrap();
        assert_eq!(config.cluster().unwrap().map(|c| c.node_id), Some(2));
        let toml = config.to_toml();
        assert!(toml.contains("[cluster]\nnode_id = 2  # flag"), "{toml}");
        assert!(toml.contains("peers = [\"1=127.0.0.1:7071\", "), "{toml}");
        let refused = |args: &[&str]| resolve(args).unwrap_err().to_string();
        assert!(refused(&["serve", "--node-id", "2"]).contains("peers is not"));
        assert!(refused(&["serve", "--peers", peers]).contains("node_id is not"));
        let missing =
            format!("{:#}", resolve(&["serve", "--node-id", "4", "--peers", peers]).unwrap_err());
        assert!(missing.contains("id 4 is not among the peers (1, 2, 3)"), "{missing}");
        let twice = format!(
            "{:#}",
            resolve(&["serve", "--node-id", "1", "--peers", "1=127.0.0.1:1,1=127.0.0.2:1"])
                .unwrap_err()
        );
        assert!(twice.contains("node 1 is listed twice"), "{twice}");
        let remote = format!(
            "{:#}",
            resolve(&["serve", "--node-id", "1", "--peers", "1=10.1.1.1:7071"]).unwrap_err()
        );
        assert!(remote.contains("not a loopback address"), "{remote}");
        assert!(remote.contains("set peer_tls_cert, peer_tls_key and peer_tls_ca"), "{remote}");
        let remote = ["serve", "--node-id", "1", "--peers", "1=10.1.1.1:7071"];
        let partly = format!(
            "{:#}",
            resolve(&[&remote[..], &["--peer-tls-cert", "node.pem"]].concat()).unwrap_err()
        );
        assert!(partly.contains("go together: set all three"), "{partly}");
        let all =
            ["--peer-tls-cert", "/nonexistent/n.pem", "--peer-tls-key", "k", "--peer-tls-ca", "c"];
        let unreadable = format!("{:#}", resolve(&[&remote[..], &all].concat()).unwrap_err());
        assert!(
            unreadable.contains("peer_tls_cert: cannot read /nonexistent/n.pem"),
            "{unreadable}"
        );
        let alone = format!(
            "{:#}",
            resolve(&["serve", "--node-id", "1", "--peers", peers, "--peer-tls-crl", "crl.pem"])
                .unwrap_err()
        );
        assert!(alone.contains("peer_tls_crl revokes peer certificates"), "{alone}");
        let grpc = refused(&["serve", "--node-id", "1", "--peers", "1=127.0.0.1:7070"]);
        assert!(grpc.contains("also the gRPC listener's"), "{grpc}");
        let kafka = refused(&[
            "serve",
            "--node-id",
            "1",
            "--peers",
            "1=127.0.0.1:9092",
            "--kafka",
            "127.0.0.1:9092",
        ]);
        assert!(kafka.contains("also the Kafka listener's"), "{kafka}");
    }

    #[test]
    fn a_node_advertises_its_grpc_address_only_in_a_cluster_and_never_a_wildcard() {
        let peers = "1=127.0.0.1:7071,2=127.0.0.2:7071,3=127.0.0.3:7071";
        let cluster = ["serve", "--node-id", "2", "--peers", peers];
        let config = resolve(&cluster).unwrap();
        assert_eq!(config.advertised.value, None);
        assert!(config.to_toml().contains("# advertised =  # not set"));
        let config =
            resolve(&[&cluster[..], &["--advertised", "node2.example:7070"]].concat()).unwrap();
        assert_eq!(config.advertised.value.as_ref().unwrap().to_string(), "node2.example:7070");
        assert!(config.to_toml().contains("advertised = \"node2.example:7070\"  # flag"));
        let refused = |args: &[&str]| resolve(args).unwrap_err().to_string();
        let single = refused(&["serve", "--advertised", "node2.example:7070"]);
        assert!(single.contains("advertised is set but node_id and peers are not"), "{single}");
        for wildcard in ["0.0.0.0:7070", "[::]:7070"] {
            let refused = refused(&[&cluster[..], &["--advertised", wildcard]].concat());
            assert!(refused.contains("is a wildcard address"), "{refused}");
        }
        assert!(
            refused(&[&cluster[..], &["--advertised", "node2"]].concat()).contains("HOST:PORT")
        );
    }

    #[test]
    fn the_partition_limit_is_sized_from_the_machine_unless_set() {
        let config = resolve(&["serve"]).unwrap();
        assert_eq!(config.partitions_max.value, None);
        let config = resolve(&["serve", "--partitions-max", "5000"]).unwrap();
        assert_eq!(config.partitions_max.value, Some(5000));
        assert!(config.to_toml().contains("partitions_max = 5000  # flag"));
        let refused = resolve(&["serve", "--partitions-max", "0"]).unwrap_err().to_string();
        assert!(refused.contains("0"), "{refused}");
    }

    #[test]
    fn direct_writes_are_on_unless_switched_off() {
        assert!(resolve(&["serve"]).unwrap().direct_writes.value);
        let config = resolve(&["serve", "--direct-writes", "false"]).unwrap();
        assert!(!config.direct_writes.value);
        assert!(config.to_toml().contains("direct_writes = false  # flag"));
        assert!(resolve(&["serve", "--direct-writes", "sometimes"]).is_err());
    }

    #[test]
    fn the_browser_listener_is_off_by_default_and_loopback_only_unless_accepted() {
        let config = resolve(&["serve"]).unwrap();
        assert_eq!(config.http.value, None);
        assert!(config.to_toml().contains("# http =  # not set"));
        let config = resolve(&["serve", "--http", "127.0.0.1:8080"]).unwrap();
        assert_eq!(config.http.value, Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert!(config.to_toml().contains("http = \"127.0.0.1:8080\"  # flag"));
        let refused = resolve(&["serve", "--http", "0.0.0.0:8080"]).unwrap_err().to_string();
        assert!(refused.contains("plain HTTP"), "{refused}");
        let accepted =
            resolve(&["serve", "--http", "0.0.0.0:8080", "--allow-insecure-remote"]).unwrap();
        assert_eq!(accepted.http.value, Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
    }

    #[test]
    fn the_metrics_endpoint_is_loopback_only_unless_accepted() {
        let refused = resolve(&["serve", "--metrics", "0.0.0.0:9090"]).unwrap_err().to_string();
        assert!(refused.contains("metrics: 0.0.0.0:9090 is not a loopback address"), "{refused}");
        assert!(!refused.contains("  "), "one space between words: {refused}");
        let accepted =
            resolve(&["serve", "--metrics", "0.0.0.0:9090", "--allow-insecure-remote"]).unwrap();
        assert_eq!(accepted.metrics.value, Some(SocketAddr::from(([0, 0, 0, 0], 9090))));
        assert!(resolve(&["serve", "--metrics", "127.0.0.1:9090"]).is_ok());
        let refused = resolve(&["serve", "--http", "0.0.0.0:8080"]).unwrap_err().to_string();
        assert!(!refused.contains("  "), "one space between words: {refused}");
        let origin = resolve(&["serve", "--http-allowed-origin", "events.example"]).unwrap_err();
        assert!(origin.to_string().contains("http_allowed_origins"), "{origin}");
    }

    #[test]
    fn the_kafka_listener_is_off_by_default_and_loopback_only_unless_secured() {
        let config = resolve(&["serve"]).unwrap();
        assert_eq!(config.kafka.value, None);
        assert!(config.to_toml().contains("# kafka =  # not set"));
        let config = resolve(&[
            "serve",
            "--kafka",
            "127.0.0.1:9092",
            "--kafka-advertised",
            "broker.example:19092",
        ])
        .unwrap();
        assert_eq!(config.kafka.value, Some(SocketAddr::from(([127, 0, 0, 1], 9092))));
        assert!(config.to_toml().contains("kafka = \"127.0.0.1:9092\"  # flag"));
        assert!(config.to_toml().contains("kafka_advertised = \"broker.example:19092\"  # flag"));
        let refused = resolve(&["serve", "--kafka", "0.0.0.0:9092"]).unwrap_err().to_string();
        assert!(refused.contains("kafka: 0.0.0.0:9092 is not a loopback address"), "{refused}");
        assert!(!refused.contains("  "), "one space between words: {refused}");
        let accepted =
            resolve(&["serve", "--kafka", "0.0.0.0:9092", "--allow-insecure-remote"]).unwrap();
        assert_eq!(accepted.kafka.value, Some(SocketAddr::from(([0, 0, 0, 0], 9092))));
        let secured = resolve(&[
            "serve",
            "--kafka",
            "0.0.0.0:9092",
            "--tokens",
            "tokens.toml",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ])
        .unwrap();
        assert_eq!(secured.kafka.value, Some(SocketAddr::from(([0, 0, 0, 0], 9092))));
        let refused = resolve(&["serve", "--kafka", "0.0.0.0:9092", "--tokens", "tokens.toml"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("not secured"), "{refused}");
        let refused = resolve(&["serve", "--kafka-advertised", "h:1"]).unwrap_err().to_string();
        assert!(refused.contains("kafka is not"), "{refused}");
        assert!(
            resolve(&["serve", "--kafka", "127.0.0.1:9092", "--kafka-advertised", "h"]).is_err()
        );
    }
}
