//! examples/slurm/ on a real Slurm: a one-node cluster of the test's own (Debian's slurmctld and slurmd,
//! a munged with its own key and socket, everything in a temp dir) grades a small class as a 3-task job
//! array, merge.sbatch runs after it (`--dependency=afterok`), and the merged report equals an
//! unsharded `grade batch` of the same class.
//!
//! Needs root and `bash scripts/install-slurm.sh`; without them it fails (it does not skip). Ignored by
//! default; .ci/run runs it on its own:
//! `cargo test --release --locked --features train --test slurm_array -- --ignored`.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_dir, fixture, read_json, root};
use gradekit::tasks::batch::Shard;

/// The longest any daemon start, node registration or scancel may take.
const WAIT: Duration = Duration::from_secs(120);
/// The array and the merge together (the grading itself is a few seconds per student).
const JOBS_WAIT: Duration = Duration::from_secs(600);

/// A command for this test's cluster only: SLURM_CONF points at it, and any SLURM_*/SBATCH_* of an
/// enclosing Slurm job (a CI runner may be one) is dropped so it cannot leak into ours.
fn slurm_cmd(prog: &str, conf: &Path) -> Command {
    let mut c = Command::new(prog);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("SLURM_") || k.starts_with("SBATCH_") || k.starts_with("SALLOC_") {
            c.env_remove(k);
        }
    }
    c.env("SLURM_CONF", conf);
    c
}

/// Runs `c` to the end within `limit`, stdout and stderr into `log`.{out,err}; returns the exit code and
/// both texts. Past the limit the command is killed and the test fails.
fn run_logged(c: &mut Command, limit: Duration, log: &Path) -> (Option<i32>, String, String) {
    let (out, err) = (log.with_extension("out"), log.with_extension("err"));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{c:?} still running after {limit:?}; killed\nstdout: {}\nstderr: {}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (status.code(), std::fs::read_to_string(&out).unwrap_or_default(), std::fs::read_to_string(&err).unwrap_or_default())
}

fn tail(p: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// munged, slurmctld and slurmd as child processes; stopped (jobs cancelled first) on drop, also when
/// the test fails, and then their logs are printed.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn spawn(&mut self, name: &'static str, c: &mut Command) {
        let log = File::create(self.dir.join(format!("{name}.stderr"))).unwrap();
        // Should the test process die without unwinding (SIGKILL), the daemons die with it.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child =
            c.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// Fails at once, with the reason, when a daemon has exited.
    fn check_alive(&mut self) {
        for (name, child) in &mut self.daemons {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("{name} exited ({s}) while the test needed it; its log is below");
            }
        }
    }

    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Self) -> bool) {
        let t = Instant::now();
        while !ready(self) {
            self.check_alive();
            assert!(t.elapsed() < WAIT, "{what}: not after {WAIT:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        // The daemons' stderr holds what came before their log file opened (a bad slurm.conf).
        let mut files: Vec<(PathBuf, usize)> =
            [("munged.stderr", 40), ("slurmctld.stderr", 20), ("slurmctld.log", 80), ("slurmd.stderr", 20), ("slurmd.log", 80)]
                .iter()
                .map(|(f, n)| (self.dir.join(f), *n))
                .collect();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("job-logs")) {
            let mut jobs: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
            jobs.sort();
            files.extend(jobs.into_iter().map(|f| (f, 80)));
        }
        for (f, n) in files {
            s += &format!("----- {} (last {n} lines)\n{}\n", f.display(), tail(&f, n));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(q) = slurm_cmd("squeue", &self.conf).args(["--all", "-l"]).output() {
                eprintln!("----- squeue\n{}{}", String::from_utf8_lossy(&q.stdout), String::from_utf8_lossy(&q.stderr));
            }
            eprintln!("{}", self.logs());
        }
        // No job of ours may outlive the test (slurmstepd keeps running a job when slurmd stops).
        if self.daemons.iter().any(|(n, _)| *n == "slurmctld") {
            if let Ok(mut c) = slurm_cmd("scancel", &self.conf).args(["--user", "root"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
            {
                let t = Instant::now();
                while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                let _ = c.kill();
                let _ = c.wait();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // slurmd, slurmctld, then munged: SIGTERM, then SIGKILL after 15 s.
        while let Some((_, mut child)) = self.daemons.pop() {
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let t = Instant::now();
            while child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from)).map(|d| d.join(prog)).find(|p| p.is_file())
}

fn free_port() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A one-node cluster in `dir` (which must be world-searchable: munged checks its socket's path).
fn start_cluster(dir: &Path) -> Cluster {
    // What the machine has, as slurmd itself will report it at registration (a node configured with
    // more CPUs or memory than it registers is drained).
    let hw = Command::new("slurmd").arg("-C").output().unwrap();
    let hw = String::from_utf8_lossy(&hw.stdout).into_owned();
    let node = hw
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .unwrap_or_else(|| panic!("`slurmd -C` printed no NodeName line: {hw}"))
        .split_whitespace()
        .filter(|w| !w.starts_with("NodeName="))
        .collect::<Vec<_>>()
        .join(" ");

    // munge: a private key, socket, pid and seed file, so that the machine's munged (if any) is neither
    // needed nor disturbed. It refuses a key readable by others and a socket path not searchable by all.
    let munge = dir.join("munge");
    std::fs::create_dir_all(&munge).unwrap();
    let key = munge.join("munge.key");
    let mut bytes = vec![0u8; 1024];
    std::io::Read::read_exact(&mut File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    std::fs::write(&key, &bytes).unwrap();
    set_mode(&key, 0o600);
    set_mode(&munge, 0o755);
    let socket = munge.join("munge.socket");

    // Fresh ports, so that a machine's own slurmctld/slurmd (on 6817/6818) does not answer instead.
    let (p1, p2) = (free_port(), free_port());
    let (ctld_port, d_port) = (p1.local_addr().unwrap().port(), p2.local_addr().unwrap().port());
    drop((p1, p2));
    let d = dir.display();
    let conf = dir.join("slurm.conf");
    std::fs::write(
        &conf,
        format!(
            "# A one-node cluster for tests/slurm_array.rs.
ClusterName=gradekit-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=debug
SlurmdDebug=debug
# No cgroups: a container rarely lets slurmd create its own. Processes are tracked by parent pid.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
",
            socket = socket.display()
        ),
    )
    .unwrap();
    for sub in ["state", "spool", "job-logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }

    let mut c = Cluster { dir: dir.to_path_buf(), conf: conf.clone(), daemons: vec![] };
    c.spawn(
        "munged",
        Command::new("munged")
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!("--seed-file={}", munge.join("munged.seed").display())),
    );
    c.wait_for("munged's socket", |_| socket.exists());
    // -D: in the foreground (a child of the test); -c: no state from any earlier run; slurmd -N: the
    // node is `localhost` whatever the machine's hostname.
    c.spawn("slurmctld", slurm_cmd("slurmctld", &conf).args(["-D", "-c"]));
    c.spawn("slurmd", slurm_cmd("slurmd", &conf).args(["-D", "-N", "localhost"]));
    c.wait_for("node localhost idle in sinfo", |c| {
        let o = slurm_cmd("sinfo", &c.conf).args(["-h", "-n", "localhost", "-o", "%T"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "idle"
    });
    c
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Five students over the three shards (each shard gets one: checked below): two working models
/// for both graders, CSV predictions, a file that is no model (an error), a student without a diffusion
/// model (failed).
fn make_class(root: &Path) -> PathBuf {
    let class = root.join("class");
    let template = fixture("models/digit-template.onnx");
    let oracle = fixture("models/noise-oracle.onnx");
    let labels = std::fs::read(fixture("digits/usps/val.csv")).unwrap();
    let put = |student: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(class.join(student)).unwrap();
        std::fs::write(class.join(student).join(name), bytes).unwrap();
    };
    let (template, oracle) = (std::fs::read(template).unwrap(), std::fs::read(oracle).unwrap());
    put("alice", "ddpm.onnx", &oracle);
    put("alice", "dann-usps.onnx", &template);
    put("bob", "dann-usps.csv", &labels);
    put("carol", "dann-usps.onnx", b"this is not a model");
    put("dan", "dann-usps.csv", &labels);
    put("erin", "ddpm.onnx", &oracle);
    put("erin", "dann-usps.onnx", &template);
    class
}

/// `grade batch` arguments after CLASS and --out: the fast settings of tests/batch_class.rs (tract,
/// 5 diffusion steps, the fixture digit classifier as judge), with a timeout loose enough that a busy
/// machine cannot turn a run into `timeout` in one run and not in the other.
fn batch_args(d: &Path) -> Vec<String> {
    let classifier = fixture("models/digit-template.onnx");
    let args = vec![
        "--data".into(),
        d.join("data").display().to_string(),
        "--grader-arg".into(),
        "all=--backend=tract".into(),
        "--grader-arg".into(),
        "ddpm=--steps=5".into(),
        "--grader-arg".into(),
        format!("ddpm=--classifier={}", classifier.display()),
        "--student-memory".into(),
        "1G".into(),
        "--timeout".into(),
        "120s".into(),
    ];
    // GRADE_ARGS is split on blanks.
    assert!(args.iter().all(|a| !a.contains(char::is_whitespace)), "a path with blanks: {args:?}");
    args
}

use common::class_results_without_time as results_without_time;

#[test]
#[ignore = "needs root and Slurm (bash scripts/install-slurm.sh); .ci/run runs it"]
fn slurm_job_array_shards_merge_to_the_unsharded_run() {
    let missing: Vec<&str> =
        ["munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel", "squeue"].into_iter().filter(|p| which(p).is_none()).collect();
    assert!(missing.is_empty(), "{missing:?} not installed: run `bash scripts/install-slurm.sh` (as root) first");
    assert_eq!(unsafe { libc::geteuid() }, 0, "the test cluster runs as root (SlurmUser=root): run the test as root");
    let examples = root().join("examples/slurm");
    let grade = assert_cmd::cargo::cargo_bin("grade");

    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    set_mode(d, 0o755);
    let class = make_class(d);
    copy_dir(&fixture("digits/usps"), &d.join("data/digits/usps"));
    let students = ["alice", "bob", "carol", "dan", "erin"];
    for i in 1..=3 {
        let shard = Shard { index: i, count: 3 };
        assert!(students.iter().any(|s| shard.holds(s)), "no student in shard {i}/3: pick other ids");
    }
    let args = batch_args(d);

    // The reference: one unsharded run (carol's file is no model, so the batch exits 1).
    let t = Instant::now();
    let (code, stdout, stderr) = run_logged(
        Command::new(&grade).arg("batch").arg(&class).arg("--out").arg(d.join("full")).args(&args),
        JOBS_WAIT,
        &d.join("full-batch"),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let full = results_without_time(&d.join("full/class.json"));
    let status = |id: &str| full.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap()["status"].clone();
    assert_eq!((status("alice"), status("carol")), ("passed".into(), "error".into()), "{full}");
    eprintln!("unsharded batch: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let cluster = start_cluster(d);
    eprintln!("cluster up: {:.1} s", t.elapsed().as_secs_f64());

    // The array, as examples/slurm/README.md submits it: settings in the environment, which sbatch
    // hands to the job. --parsable prints the job id at once; --wait returns when every task ended,
    // with the highest task exit code.
    let out = d.join("out");
    let t = Instant::now();
    let (code, stdout, stderr) = run_logged(
        slurm_cmd("sbatch", &cluster.conf)
            .current_dir(d)
            .env("CLASS", &class)
            .env("OUT", &out)
            .env("GRADE", &grade)
            .env("GRADE_ARGS", args.join(" "))
            .args(["--parsable", "--wait", "--array=1-3", "--job-name=grade-class"])
            .arg(format!("--output={}/job-logs/slurm-%A_%a.out", d.display()))
            .arg(examples.join("grade-class.sbatch")),
        JOBS_WAIT,
        &d.join("sbatch-array"),
    );
    // Shard 3 holds carol, so `grade batch` exited 1 there: the script must still end the task with 0.
    assert_eq!(code, Some(0), "sbatch --wait: a task failed\nstdout: {stdout}\nstderr: {stderr}");
    let job: u64 =
        stdout.trim().split(';').next().unwrap().parse().unwrap_or_else(|_| panic!("no job id from sbatch --parsable: {stdout:?}"));
    eprintln!("array job {job}: {:.1} s", t.elapsed().as_secs_f64());
    for i in 1..=3 {
        let shard = out.join(format!("shard-{i}"));
        assert!(shard.join("class.json").is_file(), "{} has no class.json", shard.display());
        assert_eq!(read_json(&shard.join("class.json"))["shards"], serde_json::json!([{"index": i, "count": 3}]));
        assert!(d.join(format!("job-logs/slurm-{job}_{i}.out")).is_file());
    }

    // The merge, after the array by dependency, as the README says.
    let t = Instant::now();
    let (code, stdout, stderr) = run_logged(
        slurm_cmd("sbatch", &cluster.conf)
            .current_dir(d)
            .env("OUT", &out)
            .env("GRADE", &grade)
            .args(["--parsable", "--wait", "--kill-on-invalid-dep=yes"])
            .arg(format!("--dependency=afterok:{job}"))
            .arg(format!("--output={}/job-logs/merge-%j.out", d.display()))
            .arg(examples.join("merge.sbatch")),
        JOBS_WAIT,
        &d.join("sbatch-merge"),
    );
    assert_eq!(code, Some(0), "merge job\nstdout: {stdout}\nstderr: {stderr}");
    eprintln!("merge job: {:.1} s", t.elapsed().as_secs_f64());
    let merged = out.join("merged");
    assert_eq!(results_without_time(&merged.join("class.json")), full);
    assert!(merged.join("scoreboard.csv").is_file() && merged.join("scoreboard.html").is_file());
    assert!(merged.join("students/alice/ddpm/grid.png").is_file());
    drop(cluster);
}
