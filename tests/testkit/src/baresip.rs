//! Debian's baresip 1.0 as a peer nobody here wrote: one process with its
//! own config folder, bound to loopback only (its SDP must never name
//! another interface), its audio looped (aubridge: what it hears is what it
//! sends), SRTP and the command menu loaded.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, installed, media_port};

/// Whether baresip is installed (under CI it must be).
pub fn available() -> bool {
    installed("baresip", "-h", "baresip-core")
}

/// A running baresip; killed on drop.
pub struct Baresip {
    child: Child,
    dir: tempfile::TempDir,
}

impl Baresip {
    /// Starts baresip with `account` as its accounts line
    /// (`<sip:user@server>;auth_pass=…;answermode=auto`) and runs each of
    /// `commands` (`/dial sip:…`) once it is up.
    pub fn start(account: &str, commands: &[&str]) -> Baresip {
        let dir = tempfile::tempdir().expect("tempdir");
        let rtp = media_port();
        std::fs::write(dir.path().join("accounts"), format!("{account}\n")).expect("accounts");
        std::fs::write(
            dir.path().join("config"),
            format!(
                "sip_listen 127.0.0.1:{}\nnet_interface 127.0.0.1\nrtp_ports {rtp}-{}\n\
                 audio_player aubridge,loop\naudio_source aubridge,loop\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\nmodule aubridge.so\nmodule srtp.so\n\
                 module_app account.so\nmodule_app menu.so\n",
                free_port(),
                rtp + 2
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("baresip.log")).expect("log");
        let mut cmd = Command::new("baresip");
        // -s: the SIP trace goes to the log, for the tests to read.
        cmd.arg("-f").arg(dir.path()).arg("-s");
        for c in commands {
            cmd.arg("-e").arg(c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn baresip");
        Baresip { child, dir }
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("baresip.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `secs` until the log shows `what`.
    pub fn wait_for(&self, what: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.log().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
