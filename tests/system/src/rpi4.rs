//! The rpi4 image in QEMU's `raspi4b` machine (QEMU 10, through
//! `scripts/run-qemu-rpi4`): real U-Boot, the project's boot script, Debian's kernel,
//! on an SD card file that persists across power cycles. No network and no test shell:
//! what a test sees is the console, and what it changes between power cycles it
//! changes on the card's FAT with mtools, as a person with a card reader would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::MutexGuard;
use std::time::Duration;

use outpost_bootctl::UbootFileEnv;

use crate::{check_child, io_err, repo_root, run_checked, unique_dir, BuiltImage, Console, Result};

/// One emulated Pi 4 and its SD card.
pub struct Rpi4Qemu {
    image: PathBuf,
    dir: PathBuf,
    card: PathBuf,
    child: Option<Child>,
    console: Console,
    boots: u32,
    /// Held while the machine exists: one emulated machine at a time.
    _slot: MutexGuard<'static, ()>,
}

impl Rpi4Qemu {
    /// A machine with a fresh card written from the image (not powered on yet).
    pub fn new(built: &BuiltImage) -> Result<Self> {
        let slot = crate::MACHINE_SLOT
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = unique_dir()?;
        let card = dir.join("sd.img");
        run_checked(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&built.image)
                .arg(&card),
            "copying the image to the SD card file",
        )?;
        Ok(Rpi4Qemu {
            image: built.image.clone(),
            console: Console::new(dir.join("serial-0.log")),
            dir,
            card,
            child: None,
            boots: 0,
            _slot: slot,
        })
    }

    /// The SD card file (raw).
    pub fn card(&self) -> &Path {
        &self.card
    }

    /// Powers the board on; each power-on gets its own console log.
    pub fn power_on(&mut self) -> Result<()> {
        self.power_off();
        self.boots += 1;
        let serial = self.dir.join(format!("serial-{}.log", self.boots));
        self.console = Console::new(serial.clone());
        let mut cmd = Command::new(repo_root().join("scripts/run-qemu-rpi4"));
        cmd.arg(&self.image)
            .arg("--disk")
            .arg(&self.card)
            .arg("--serial")
            .arg(&serial)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                fs::File::create(self.dir.join("qemu.out")).map_err(io_err("qemu.out"))?,
            ))
            .stderr(Stdio::from(
                fs::File::create(self.dir.join("qemu.err")).map_err(io_err("qemu.err"))?,
            ));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(
            cmd.spawn()
                .map_err(io_err("starting scripts/run-qemu-rpi4"))?,
        );
        Ok(())
    }

    /// Pulls the power at once.
    pub fn power_off(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--"])
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for a console line of this power-on matching `pattern`.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let Rpi4Qemu {
            console,
            child,
            dir,
            ..
        } = self;
        console.wait_for(pattern, timeout, &mut || check_child(child, dir))
    }

    /// This power-on's console so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// Changes the boot state on the card's FAT (powered off) with the product's own
    /// model of it: both copies are read off the card, `change` runs on them, and
    /// what it wrote goes back.
    pub fn change_boot_state(
        &mut self,
        change: impl FnOnce(&UbootFileEnv) -> std::result::Result<(), String>,
    ) -> Result<()> {
        self.power_off();
        let fat = self.fat()?;
        let tmp = self.dir.join("bootstate");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err("boot state dir"))?;
        let names = outpost_bootctl::store::COPY_NAMES;
        for name in names {
            // a copy may be missing on a fresh card
            let _ = Command::new("mcopy")
                .args(["-n", "-i", &fat])
                .arg(format!("::/{name}"))
                .arg(tmp.join(name))
                .status();
        }
        let cmdline = self.dir.join("cmdline");
        fs::write(&cmdline, "ro\n").map_err(io_err("cmdline"))?;
        change(&UbootFileEnv::new(&tmp).with_cmdline(&cmdline)).map_err(|e| crate::Error::Io {
            step: "changing the boot state".into(),
            source: std::io::Error::other(e),
        })?;
        for name in names {
            let copy = tmp.join(name);
            if copy.exists() {
                run_checked(
                    Command::new("mcopy")
                        .args(["-o", "-i", &fat])
                        .arg(&copy)
                        .arg(format!("::/{name}")),
                    "writing the boot state to the card",
                )?;
            }
        }
        Ok(())
    }

    /// mtools' name for the card's FAT (partition 1).
    fn fat(&self) -> Result<String> {
        let out = Command::new("sfdisk")
            .arg("--dump")
            .arg(&self.card)
            .output()
            .map_err(io_err("sfdisk --dump"))?;
        let table = String::from_utf8_lossy(&out.stdout);
        let start = table
            .lines()
            .find(|l| l.contains("1 : start="))
            .and_then(|l| l.split("start=").nth(1))
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| crate::Error::Io {
                step: "finding the FAT on the card".into(),
                source: std::io::Error::other(table.to_string()),
            })?;
        Ok(format!("{}@@{}", self.card.display(), start * 512))
    }
}

impl Drop for Rpi4Qemu {
    fn drop(&mut self) {
        self.power_off();
        if std::env::var_os("OUTPOST_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
