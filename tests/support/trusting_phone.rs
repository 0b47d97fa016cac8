//! A simulated phone that keeps the trust lists it fetched and applies the acceptance rule of
//! docs/wire-formats.md §3.9 to every later file: a new ITL or CTL only when a SAST record of the
//! one it holds signed it (the first of each is taken as it comes), and a signed configuration
//! file only when a TFTP or CCM+TFTP record of a list it holds signed it.

#![allow(dead_code)]

use callguard::core::trust::{Mode, SignatureCheck, SignedFile, TrustList, TrustListKind};
use callguard::services::tftp::FileSource;

#[derive(Debug, Default, Clone)]
pub struct TrustingPhone {
    pub itl: Option<TrustList>,
    pub ctl: Option<TrustList>,
}

impl TrustingPhone {
    /// Fetches the trust lists `served` offers, then `config` (a `.sgn` name) when given, as a
    /// phone does at boot; every refusal is an error naming the file and why.
    pub fn fetch(&mut self, served: &dyn FileSource, config: Option<&str>) -> Result<(), String> {
        // The CTL first: a phone with a CTL authenticates the rest through it.
        for kind in [TrustListKind::Ctl, TrustListKind::Itl] {
            if let Some(bytes) = served.get(kind.filename()) {
                self.offer(kind, &bytes)?;
            }
        }
        if let Some(name) = config {
            let bytes = served.get(name).ok_or_else(|| format!("{name} is not served"))?;
            self.check_configuration(name, &bytes)?;
        }
        Ok(())
    }

    /// Takes a new ITL or CTL when the held one's SAST signed it.
    pub fn offer(&mut self, kind: TrustListKind, bytes: &[u8]) -> Result<(), String> {
        let list = TrustList::parse(bytes, Mode::Strict).map_err(|e| format!("{}: {e}", kind.filename()))?;
        let held = match kind {
            TrustListKind::Itl => &mut self.itl,
            TrustListKind::Ctl => &mut self.ctl,
        };
        match held {
            Some(current) if current.as_bytes() == bytes => {}
            Some(current) => {
                list.verify_against(current).map_err(|e| format!("{} refused: {e}", kind.filename()))?;
                *held = Some(list);
            }
            None => {
                list.verify().map_err(|e| format!("{} (the first) refused: {e}", kind.filename()))?;
                *held = Some(list);
            }
        }
        Ok(())
    }

    /// A signed configuration file verifies against a list the phone holds.
    pub fn check_configuration(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let file = SignedFile::parse(bytes, Mode::Strict).map_err(|e| format!("{name}: {e}"))?;
        let lists = [self.ctl.as_ref(), self.itl.as_ref()];
        if lists.iter().flatten().any(|list| file.verify(SignatureCheck::TrustList(list)).is_ok()) {
            Ok(())
        } else {
            Err(format!("{name} refused: no TFTP record of the held trust lists signed it"))
        }
    }

    /// The DER of the SAST records of the held ITL.
    pub fn itl_sast(&self) -> Vec<Vec<u8>> {
        self.itl.iter().flat_map(|l| l.sast_records().map(|r| r.certificate_der.clone())).collect()
    }

    /// The DER of the SAST records of the held CTL.
    pub fn ctl_sast(&self) -> Vec<Vec<u8>> {
        self.ctl.iter().flat_map(|l| l.sast_records().map(|r| r.certificate_der.clone())).collect()
    }
}
