//! The `ripple-bench` command line: one scenario per run against one server, or `report` to
//! combine runs. Only targets on this machine are accepted (loopback addresses).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ripple_bench::procstat::Probe;
use ripple_bench::scenario::{
    self, BigdocOpts, BurstOpts, Common, ConnectOpts, FanoutOpts, IdleOpts,
};
use ripple_bench::session::Target;
use ripple_bench::wire::Protocol;
use ripple_bench::{compare, report::Report};

/// Load generator for Yjs WebSocket servers (y-websocket, y-partykit and Hocuspocus protocols).
#[derive(Debug, Parser)]
#[command(name = "ripple-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// URL template: {room} is the room name, {conn} a unique connection id. Several URLs,
    /// comma-separated (a cluster's nodes): each room's first connection uses the first, the
    /// others go round-robin over the rest.
    #[arg(long, default_value = "ws://127.0.0.1:1999/{room}")]
    url: String,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "yws")]
    protocol: Protocol,
    /// Server label in reports.
    #[arg(long, default_value = "ripple")]
    label: String,
    /// Scenario name in reports (default: the scenario's own), e.g. connect-10k.
    #[arg(long)]
    name: Option<String>,
    /// Server pid: its process tree's CPU and RSS are sampled from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connects (handshake + sync) in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds one connect + sync may take.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Seconds to wait for every write to arrive after writers stop.
    #[arg(long, default_value_t = 15.0)]
    drain_timeout: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Also append the JSON line to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// R rooms × N clients, one writer per room at a fixed rate: latency, delivered/s, CPU.
    Fanout {
        #[command(flatten)]
        g: Global,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Clients per room, the writer included.
        #[arg(long, default_value_t = 11)]
        clients: usize,
        /// Writes per second per room.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// C clients connect as fast as possible: connections/s, failures, RSS per connection.
    Connect {
        #[command(flatten)]
        g: Global,
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        rooms: usize,
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// A large document, then M fresh clients join one by one: join time, CPU per join.
    Bigdoc {
        #[command(flatten)]
        g: Global,
        #[arg(long, default_value_t = 200_000)]
        text_inserts: usize,
        #[arg(long, default_value_t = 10_000)]
        map_keys: usize,
        #[arg(long, default_value_t = 20)]
        joins: usize,
        /// Text inserts per update while seeding.
        #[arg(long, default_value_t = 2000)]
        chunk: usize,
    },
    /// Every client writes as fast as it can (bounded window): accepted and delivered/s.
    Burst {
        #[command(flatten)]
        g: Global,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        clients: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Writes in flight per client.
        #[arg(long, default_value_t = 16)]
        window: u32,
    },
    /// Many rooms with few idle clients: RSS per room and per connection, idle CPU.
    Idle {
        #[command(flatten)]
        g: Global,
        #[arg(long, default_value_t = 500)]
        rooms: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
    },
    /// Measure this disk's fsync latency (64-byte write + fdatasync), as strict durability pays it.
    Fsync {
        /// Directory for the scratch file.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// Measure the machine's floor for a delivery: the CPU one small loopback TCP send costs the
    /// sending thread (the kernel delivers to the receiving socket on the sender's time), paced
    /// like fanout so every send wakes an idle reader. No server can deliver an update over
    /// TCP for less; compare it with "server CPU per delivered update".
    Floor {
        /// Receiving sockets (one reader thread each).
        #[arg(long, default_value_t = 10)]
        sockets: usize,
        /// Rounds of one send per socket.
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
        /// Pause between rounds, in microseconds.
        #[arg(long, default_value_t = 500)]
        pause_us: u64,
    },
    /// Combine JSON lines of several runs into one markdown table and an SVG chart.
    Report {
        /// File of JSON lines (other lines are ignored).
        #[arg(long)]
        input: PathBuf,
        /// Label of the server the ratios are relative to.
        #[arg(long, default_value = "ripple")]
        baseline: String,
        /// Label of the reference server the targets are judged against.
        #[arg(long, default_value = "y-websocket-server")]
        reference: String,
        /// Label of Ripple with `--persist none` (the baseline's durability is judged against it).
        #[arg(long, default_value = "ripple-memory")]
        memory: String,
        /// This machine's CPU per small loopback send, in µs (`ripple-bench floor`). With
        /// --fsync-cpu-us, the targets also show fanout's CPU as a multiple of the floor.
        #[arg(long)]
        floor_send_us: Option<f64>,
        /// This machine's CPU per fsync, in µs (`ripple-bench fsync`); see --floor-send-us.
        #[arg(long)]
        fsync_cpu_us: Option<f64>,
        /// Write the markdown here (also printed).
        #[arg(long)]
        md: Option<PathBuf>,
        /// Write the SVG chart here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Chart title.
        #[arg(long, default_value = "Ripple vs peers")]
        title: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (g, run): (Global, Box<dyn FnOnce(Common) -> Scenario>) = match cli.command {
        Command::Fsync { dir, count } => return fsync_probe(&dir, count),
        Command::Floor {
            sockets,
            rounds,
            pause_us,
        } => return send_floor(sockets, rounds, pause_us),
        Command::Report {
            input,
            baseline,
            reference,
            memory,
            floor_send_us,
            fsync_cpu_us,
            md,
            svg,
            title,
        } => {
            let floor = match (floor_send_us, fsync_cpu_us) {
                (Some(send_us), Some(fsync_cpu_us)) => Some(compare::Floor {
                    send_us,
                    fsync_cpu_us,
                }),
                (None, None) => None,
                _ => {
                    eprintln!(
                        "note: the floor needs both --floor-send-us and --fsync-cpu-us; floor rows left out"
                    );
                    None
                }
            };
            let servers = ReportServers {
                baseline: &baseline,
                memory: &memory,
                reference: &reference,
            };
            return report(&input, servers, floor, md, svg, &title);
        }
        Command::Fanout {
            g,
            rooms,
            clients,
            rate,
            duration,
        } => (
            g,
            Box::new(move |c| {
                Scenario::Fanout(
                    c,
                    FanoutOpts {
                        rooms,
                        clients,
                        rate,
                        duration_secs: duration,
                    },
                )
            }),
        ),
        Command::Connect {
            g,
            clients,
            rooms,
            settle,
        } => (
            g,
            Box::new(move |c| {
                Scenario::Connect(
                    c,
                    ConnectOpts {
                        clients,
                        rooms,
                        settle_secs: settle,
                    },
                )
            }),
        ),
        Command::Bigdoc {
            g,
            text_inserts,
            map_keys,
            joins,
            chunk,
        } => (
            g,
            Box::new(move |c| {
                Scenario::Bigdoc(
                    c,
                    BigdocOpts {
                        text_inserts,
                        map_keys,
                        joins,
                        chunk,
                    },
                )
            }),
        ),
        Command::Burst {
            g,
            rooms,
            clients,
            duration,
            window,
        } => (
            g,
            Box::new(move |c| {
                Scenario::Burst(
                    c,
                    BurstOpts {
                        rooms,
                        clients,
                        duration_secs: duration,
                        window,
                    },
                )
            }),
        ),
        Command::Idle {
            g,
            rooms,
            clients,
            settle,
        } => (
            g,
            Box::new(move |c| {
                Scenario::Idle(
                    c,
                    IdleOpts {
                        rooms,
                        clients,
                        settle_secs: settle,
                    },
                )
            }),
        ),
    };
    for url in g.url.split(',') {
        check_local(url.trim())?;
    }
    let common = Common {
        target: Target {
            url: g.url.clone(),
            protocol: g.protocol,
        },
        label: g.label.clone(),
        probe: Probe {
            server_pid: g.server_pid,
        },
        connect_concurrency: g.connect_concurrency,
        connect_timeout: Duration::from_secs_f64(g.connect_timeout),
        drain_timeout: Duration::from_secs_f64(g.drain_timeout),
    };
    if let Some(pid) = g.server_pid {
        if ripple_bench::procstat::sample_tree(pid).is_none() {
            bail!("--server-pid {pid}: no such process");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(g.threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    ripple_bench::conn::epoch();
    let mut rep = runtime.block_on(run(common).run());
    if let Some(name) = g.name {
        rep.scenario = name;
    }
    print!("{}", rep.table());
    let line = rep.json_line();
    println!("{line}");
    if let Some(path) = g.json_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}")?;
    }
    // Let the sockets close before the runtime goes.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

enum Scenario {
    Fanout(Common, FanoutOpts),
    Connect(Common, ConnectOpts),
    Bigdoc(Common, BigdocOpts),
    Burst(Common, BurstOpts),
    Idle(Common, IdleOpts),
}

impl Scenario {
    async fn run(self) -> Report {
        match self {
            Scenario::Fanout(c, o) => scenario::fanout(&c, &o).await,
            Scenario::Connect(c, o) => scenario::connect(&c, &o).await,
            Scenario::Bigdoc(c, o) => scenario::bigdoc(&c, &o).await,
            Scenario::Burst(c, o) => scenario::burst(&c, &o).await,
            Scenario::Idle(c, o) => scenario::idle(&c, &o).await,
        }
    }
}

/// Load goes to this machine only.
fn check_local(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .context("--url must start with ws:// (local plain WebSocket only)")?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if host == "localhost" || host == "[::1]" || host.starts_with("127.") {
        Ok(())
    } else {
        bail!("refusing to load {host}: ripple-bench only targets 127.0.0.0/8, localhost or [::1]")
    }
}

/// The servers `report` judges the targets with: Ripple strict, Ripple `--persist none`, and the
/// reference.
struct ReportServers<'a> {
    baseline: &'a str,
    memory: &'a str,
    reference: &'a str,
}

fn report(
    input: &PathBuf,
    servers: ReportServers<'_>,
    floor: Option<compare::Floor>,
    md: Option<PathBuf>,
    svg: Option<PathBuf>,
    title: &str,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    // Repeated runs of a scenario against a server become one report of medians.
    let reports = compare::merge_repeats(compare::parse_lines(&text));
    if reports.is_empty() {
        bail!("no reports in {}", input.display());
    }
    let ReportServers {
        baseline,
        memory,
        reference,
    } = servers;
    let mut out = compare::markdown(&reports, baseline);
    out.push('\n');
    out.push_str(&compare::targets_markdown(&compare::targets(
        &reports, baseline, memory, reference, floor,
    )));
    print!("{out}");
    if let Some(path) = md {
        std::fs::write(&path, &out).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = svg {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(&path, compare::svg(&reports, baseline, title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn fsync_probe(dir: &std::path::Path, count: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(format!(".ripple-bench-fsync-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut times = Vec::with_capacity(count);
    let cpu_start = thread_cpu_ns()?;
    for _ in 0..count.max(1) {
        f.write_all(&[0u8; 64])?;
        let t = std::time::Instant::now();
        f.sync_data()?;
        times.push(t.elapsed().as_micros() as u64);
    }
    let cpu_us = (thread_cpu_ns()? - cpu_start) as f64 / 1000.0 / times.len() as f64;
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort_unstable();
    let ms = |p: f64| ripple_bench::report::percentile(&times, p).map_or(0.0, |v| v / 1000.0);
    println!(
        "fsync p50 {:.3} ms, p99 {:.3} ms, {:.1} µs CPU each ({} x 64-byte write + fdatasync in {})",
        ms(50.0),
        ms(99.0),
        cpu_us,
        times.len(),
        dir.display()
    );
    Ok(())
}

/// CPU time this thread has run, in nanoseconds (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    stat.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("parsing schedstat")
}

fn send_floor(sockets: usize, rounds: usize, pause_us: u64) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::new();
    for _ in 0..sockets.max(1) {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let (mut r, _) = listener.accept()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
        });
        senders.push(s);
    }
    // A small binary WebSocket frame carrying a y-websocket update, as fanout sends.
    let frame = [0x82u8; 42];
    let pause = std::time::Duration::from_micros(pause_us);
    // The pauses cost CPU too: measure them alone and subtract.
    let start = thread_cpu_ns()?;
    for _ in 0..rounds {
        std::thread::sleep(pause);
    }
    let sleeping = thread_cpu_ns()? - start;
    let start = thread_cpu_ns()?;
    for _ in 0..rounds {
        for s in &mut senders {
            s.write_all(&frame)?;
        }
        std::thread::sleep(pause);
    }
    let total = thread_cpu_ns()? - start;
    let sends = (rounds * senders.len()).max(1);
    let per_send_us = total.saturating_sub(sleeping) as f64 / 1000.0 / sends as f64;
    println!(
        "send floor {per_send_us:.2} µs CPU per small loopback send ({sends} sends over {} sockets, {pause_us} µs apart)",
        senders.len()
    );
    Ok(())
}
