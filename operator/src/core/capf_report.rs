//! The CAPF report (Chapter 6): one row per phone with its certificate operation, where it stands and
//! its LSC, as CSV (RFC 4180) for an administrator's spreadsheet. Pure: the rows are made from what a
//! build wrote (`status.yaml` and the CAPF records, see `core::build::capf`) or from the `Phone`
//! objects of a cluster, which the adapter reads (`adapters::capf_report`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{CapfAuthenticationMode, CertificateOperation, CertificateSummary, LscState, Phone};
use crate::core::build::capf::CapfRecord;

/// The columns, in order; the guide's words where it has them (Table 6-2).
pub const HEADER: [&str; 14] = [
    "Device Name",
    "Phone",
    "Model",
    "Protocol",
    "Certificate Operation",
    "Operation Completes By",
    "Authentication Mode",
    "Operation Status",
    "LSC State",
    "LSC Serial",
    "LSC Issuer",
    "LSC Not After",
    "Consecutive Auth Failures",
    "Last Completed Operation",
];

/// What a phone's spec says that the report shows, kept with its status in `status.yaml` so that the
/// report needs no manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// `SEP<MAC>` (P.5-9).
    pub name: String,
    pub model: String,
    pub protocol: String,
    pub certificate_operation: CertificateOperation,
    /// RFC 3339, when the spec sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_completes_by: Option<String>,
    /// The CAPF authentication mode of the phone's profile; absent when the profile is not there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_mode: Option<CapfAuthenticationMode>,
}

impl DeviceFacts {
    /// The facts of `phone`, whose profile's authentication mode is `mode`.
    pub fn of(phone: &Phone, mode: Option<CapfAuthenticationMode>) -> DeviceFacts {
        let capf = phone.spec.capf();
        DeviceFacts {
            name: phone.spec.device_name(),
            model: phone.spec.model.to_string(),
            protocol: phone.spec.protocol.label().to_owned(),
            certificate_operation: capf.certificate_operation(),
            operation_completes_by: capf
                .operation_completes_by
                .as_ref()
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok().map(crate::core::build::capf::rfc3339)),
            authentication_mode: mode,
        }
    }
}

/// The guide's words for an authentication mode (Table 5-1).
pub fn authentication_mode_label(mode: CapfAuthenticationMode) -> &'static str {
    match mode {
        CapfAuthenticationMode::ByAuthenticationString => "By Authentication String",
        CapfAuthenticationMode::ByNullString => "By Null String",
        CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc => "By Existing Certificate (Precedence to LSC)",
        CapfAuthenticationMode::ByExistingCertificatePrecedenceMic => "By Existing Certificate (Precedence to MIC)",
    }
}

/// One phone's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub device_name: String,
    pub phone: String,
    pub model: String,
    pub protocol: String,
    pub certificate_operation: String,
    pub operation_completes_by: String,
    pub authentication_mode: String,
    pub operation_status: String,
    pub lsc_state: String,
    pub lsc_serial: String,
    pub lsc_issuer: String,
    pub lsc_not_after: String,
    pub consecutive_auth_failures: u32,
    pub last_completed: String,
}

/// What the status of a phone says, from `status.yaml` or the `Phone`'s status.
#[derive(Debug, Clone, Default)]
pub struct PhoneState<'a> {
    pub lsc_state: Option<LscState>,
    pub operation_status: Option<&'a str>,
    pub lsc: Option<&'a CertificateSummary>,
    pub consecutive_auth_failures: u32,
}

impl Row {
    /// The row of the phone `phone` (its resource name), whose spec says `facts` and status `state`;
    /// `record` is what CAPF kept of it, when anything.
    pub fn new(phone: &str, facts: &DeviceFacts, state: &PhoneState<'_>, record: Option<&CapfRecord>) -> Row {
        let lsc_state = match state.lsc_state {
            Some(s) => format!("{s:?}"),
            None => format!("{:?}", LscState::None),
        };
        let last_completed =
            record.and_then(|r| r.completed.last()).map(|c| format!("{} at {}", c.id.operation.label(), c.at)).unwrap_or_default();
        Row {
            device_name: facts.name.clone(),
            phone: phone.to_owned(),
            model: facts.model.clone(),
            protocol: facts.protocol.clone(),
            certificate_operation: facts.certificate_operation.label().to_owned(),
            operation_completes_by: facts.operation_completes_by.clone().unwrap_or_default(),
            authentication_mode: facts.authentication_mode.map(authentication_mode_label).unwrap_or_default().to_owned(),
            operation_status: state.operation_status.unwrap_or_default().to_owned(),
            lsc_state,
            lsc_serial: state.lsc.map(|l| l.serial_number.clone()).unwrap_or_default(),
            lsc_issuer: state.lsc.map(|l| l.issuer.clone()).unwrap_or_default(),
            lsc_not_after: state.lsc.map(|l| l.not_after.clone()).unwrap_or_default(),
            consecutive_auth_failures: state.consecutive_auth_failures,
            last_completed,
        }
    }

    fn fields(&self) -> [String; 14] {
        [
            self.device_name.clone(),
            self.phone.clone(),
            self.model.clone(),
            self.protocol.clone(),
            self.certificate_operation.clone(),
            self.operation_completes_by.clone(),
            self.authentication_mode.clone(),
            self.operation_status.clone(),
            self.lsc_state.clone(),
            self.lsc_serial.clone(),
            self.lsc_issuer.clone(),
            self.lsc_not_after.clone(),
            self.consecutive_auth_failures.to_string(),
            self.last_completed.clone(),
        ]
    }
}

/// A phone's entry of `status.yaml`, as the build writes it (`core::build::ResourceStatus`).
#[derive(Debug, Deserialize)]
struct StatusEntry {
    kind: String,
    name: String,
    #[serde(default)]
    lsc_state: Option<LscState>,
    #[serde(default)]
    operation_status: Option<String>,
    #[serde(default)]
    lsc: Option<CertificateSummary>,
    #[serde(default)]
    consecutive_auth_failures: u32,
    #[serde(default)]
    device: Option<DeviceFacts>,
}

/// The rows of the phones of a build's `status.yaml` (its bytes), with the CAPF records by device
/// name; sorted by device name. `source` names the file in errors.
pub fn rows_from_status(source: &str, status_yaml: &[u8], records: &BTreeMap<String, CapfRecord>) -> Result<Vec<Row>, String> {
    let entries: Vec<StatusEntry> = serde_yaml::from_slice(status_yaml).map_err(|e| format!("{source}: {e}"))?;
    let mut rows = Vec::new();
    for entry in entries.into_iter().filter(|e| e.kind == "Phone") {
        let Some(facts) = entry.device.as_ref() else {
            return Err(format!(
                "{source}: Phone/{}: no `device` entry (device name, model, certificate operation): the state was written by an older callguard; run callguard build or local again (docs/operations.md §6.11)",
                entry.name
            ));
        };
        let state = PhoneState {
            lsc_state: entry.lsc_state,
            operation_status: entry.operation_status.as_deref(),
            lsc: entry.lsc.as_ref(),
            consecutive_auth_failures: entry.consecutive_auth_failures,
        };
        rows.push(Row::new(&entry.name, facts, &state, records.get(&facts.name)));
    }
    sort(&mut rows);
    Ok(rows)
}

/// The rows of a cluster's `Phone` objects, with the CAPF authentication mode of each
/// PhoneSecurityProfile by name; sorted by device name.
pub fn rows_from_phones(phones: &[Phone], modes: &BTreeMap<String, CapfAuthenticationMode>) -> Vec<Row> {
    let mut rows: Vec<Row> = phones
        .iter()
        .map(|phone| {
            let facts = DeviceFacts::of(phone, modes.get(&phone.spec.security_profile_ref).copied());
            let status = phone.status.as_ref();
            let state = PhoneState {
                lsc_state: status.and_then(|s| s.lsc_state),
                operation_status: status.and_then(|s| s.operation_status.as_deref()),
                lsc: status.and_then(|s| s.lsc.as_ref()),
                consecutive_auth_failures: status.map_or(0, |s| s.consecutive_auth_failures),
            };
            Row::new(phone.metadata.name.as_deref().unwrap_or_default(), &facts, &state, None)
        })
        .collect();
    sort(&mut rows);
    rows
}

fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| (&a.device_name, &a.phone).cmp(&(&b.device_name, &b.phone)));
}

/// The report as RFC 4180 CSV: a header row, then one row per phone, CRLF line ends; a field with
/// a comma, a double quote, CR or LF is quoted, its quotes doubled.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut line = |fields: &mut dyn Iterator<Item = &str>| {
        let quoted: Vec<String> = fields.map(field).collect();
        out.push_str(&quoted.join(","));
        out.push_str("\r\n");
    };
    line(&mut HEADER.iter().copied());
    for row in rows {
        let fields = row.fields();
        line(&mut fields.iter().map(String::as_str));
    }
    out
}

fn field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str) -> DeviceFacts {
        DeviceFacts {
            name: name.into(),
            model: "7970".into(),
            protocol: "SCCP".into(),
            certificate_operation: CertificateOperation::InstallUpgrade,
            operation_completes_by: Some("2036-06-30T17:00:00Z".into()),
            authentication_mode: Some(CapfAuthenticationMode::ByAuthenticationString),
        }
    }

    #[test]
    fn fields_with_commas_quotes_and_line_breaks_are_quoted() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("CN=ca, O=Example"), "\"CN=ca, O=Example\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("cr\rhere"), "\"cr\rhere\"");
    }

    #[test]
    fn the_report_has_a_header_and_one_row_per_phone_sorted_by_device_name() {
        let lsc = CertificateSummary {
            subject: "CN=SEP001122334455".into(),
            issuer: "CN=quickstart CA, O=\"Callguard\"".into(),
            serial_number: "5A17".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            sha256: "00".into(),
        };
        let installed = PhoneState {
            lsc_state: Some(LscState::Installed),
            operation_status: Some("Completed: Install/Upgrade at 2026-01-01T00:00:00Z, LSC serial 5A17"),
            lsc: Some(&lsc),
            consecutive_auth_failures: 0,
        };
        let rows = vec![
            Row::new("z", &facts("SEP00AABBCCDD04"), &PhoneState::default(), None),
            Row::new("a", &facts("SEP001122334455"), &installed, None),
        ];
        let mut sorted = rows.clone();
        sort(&mut sorted);
        let text = csv(&sorted);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 4, "header, two rows, and the final CRLF: {text:?}");
        assert_eq!(lines[0], HEADER.join(","));
        assert_eq!(
            lines[1],
            "SEP001122334455,a,7970,SCCP,Install/Upgrade,2036-06-30T17:00:00Z,By Authentication String,\"Completed: Install/Upgrade at 2026-01-01T00:00:00Z, LSC serial 5A17\",Installed,5A17,\"CN=quickstart CA, O=\"\"Callguard\"\"\",2030-01-01T00:00:00Z,0,"
        );
        assert_eq!(lines[2], "SEP00AABBCCDD04,z,7970,SCCP,Install/Upgrade,2036-06-30T17:00:00Z,By Authentication String,,None,,,,0,");
        assert_eq!(lines[3], "");
    }

    #[test]
    fn a_status_without_device_facts_is_refused_with_what_to_do() {
        let yaml = b"- kind: Phone\n  name: lobby\n  ready: true\n  reason: Ready\n";
        let e = rows_from_status("STATE/status.yaml", yaml, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("Phone/lobby") && e.contains("run callguard build or local again"), "{e}");
    }
}
