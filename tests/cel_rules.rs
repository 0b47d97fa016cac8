//! Every CEL rule of every CRD, run offline through kube's `cel` feature: for each rule an object
//! it accepts and one it rejects with its message. A rule without a case here fails the test.

use std::collections::BTreeSet;

use callguard::validate::kind_schemas;
use kube::core::cel::Validator;
use serde_json::{Value, json};

/// Kind, metadata-less spec that passes every rule, spec that breaks exactly this rule, message.
struct Case {
    kind: &'static str,
    accepts: Value,
    rejects: Value,
    message: &'static str,
}

fn object(kind: &str, spec: &Value) -> Value {
    json!({"apiVersion": "callguard.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

fn cluster(extra: Value) -> Value {
    let mut spec =
        json!({"nodes": [{"name": "cm1", "hostname": "cm1.example", "firstNode": true}, {"name": "cm2", "hostname": "cm2.example"}]});
    merge(&mut spec, extra);
    spec
}

fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

fn phone(extra: Value) -> Value {
    let mut spec = json!({"macAddress": "001122334455", "model": "7970", "protocol": "SIP", "securityProfileRef": "p"});
    merge(&mut spec, extra);
    spec
}

fn cases() -> Vec<Case> {
    let ctl = json!({"tokens": ["a", "b"], "signingToken": "a"});
    vec![
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({"media": {"firstPort": 20000, "lastPort": 20999}})),
            rejects: cluster(json!({"media": {"firstPort": 40000}})),
            message: "media.firstPort must be below media.lastPort: the range holds the relay's RTP and RTCP port pairs",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({})),
            rejects: json!({"nodes": [{"name": "cm1", "hostname": "cm1.example"}, {"name": "cm2", "hostname": "cm2.example"}]}),
            message: "exactly one node must be the first node (publisher): set firstNode: true on one node (Table 3-2)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: json!({"nodes": [{"name": "cm1", "hostname": "cm1.example", "firstNode": true, "services": {"capf": true}}, {"name": "cm2", "hostname": "cm2.example", "services": {"capf": false}}]}),
            rejects: json!({"nodes": [{"name": "cm1", "hostname": "cm1.example", "firstNode": true}, {"name": "cm2", "hostname": "cm2.example", "services": {"capf": true}}]}),
            message: "the CAPF service runs only on the first node (P.6-6)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({})),
            rejects: json!({"nodes": [{"name": "cm1", "hostname": "cm.example", "firstNode": true}, {"name": "cm2", "hostname": "cm.example"}]}),
            message: "node hostnames must be unique (Table 3-2)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({"securityMode": "Mixed", "ctl": ctl, "autoRegistration": false})),
            rejects: cluster(json!({"securityMode": "Mixed", "ctl": ctl, "autoRegistration": true})),
            message: "auto-registration is not allowed in mixed mode (Table 3-2, P.1-7)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({"securityMode": "NonSecure", "signalingBehindNat": true})),
            rejects: cluster(json!({"securityMode": "Mixed", "ctl": ctl, "signalingBehindNat": true})),
            message: "NAT is not supported in mixed mode (P.1-7)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({"securityMode": "Mixed", "ctl": ctl})),
            rejects: cluster(json!({"securityMode": "Mixed", "ctl": {"tokens": ["a"], "signingToken": "a"}})),
            message: "mixed mode needs at least two security tokens in ctl.tokens (P.1-12, P.3-9)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({"ports": {"ethernetPhonePort": 2010}})),
            // 2001 + 443 = 2444, the CTL Provider's port: the guide's own warning (P.3-5).
            rejects: cluster(json!({"ports": {"ethernetPhonePort": 2001}})),
            message: "ports must be distinct, counting the SCCP TLS port ethernetPhonePort + 443 (P.3-5)",
        },
        Case {
            kind: "CallControlCluster",
            accepts: cluster(json!({"ctl": {"tokens": ["a", "b"], "signingToken": "b"}})),
            rejects: cluster(json!({"ctl": {"tokens": ["a", "b"], "signingToken": "c"}})),
            message: "signingToken must be one of ctl.tokens (P.3-12)",
        },
        Case {
            kind: "PhoneSecurityProfile",
            accepts: json!({"protocol": "SIP", "sip": {"transportType": "UDP"}}),
            rejects: json!({"protocol": "SCCP", "sip": {"transportType": "UDP"}}),
            message: "sip settings (Table 5-2) apply only to SIP profiles; an SCCP profile has none (Table 5-1)",
        },
        Case {
            kind: "PhoneSecurityProfile",
            accepts: json!({"protocol": "SIP", "deviceSecurityMode": "Encrypted", "sip": {"transportType": "TLS"}}),
            rejects: json!({"protocol": "SIP", "deviceSecurityMode": "Authenticated", "sip": {"transportType": "TCP"}}),
            message: "Authenticated or Encrypted device security mode requires transportType TLS on a SIP profile (Table 5-2)",
        },
        Case {
            kind: "PhoneSecurityProfile",
            accepts: json!({"protocol": "SIP", "deviceSecurityMode": "NonSecure", "sip": {"transportType": "TCPAndUDP"}}),
            rejects: json!({"protocol": "SIP", "sip": {"transportType": "TLS"}}),
            message: "transportType TLS requires device security mode Authenticated or Encrypted; Non Secure uses TCP, UDP or TCP + UDP (Table 5-2)",
        },
        Case {
            kind: "Phone",
            accepts: phone(json!({"digestUserRef": "alice"})),
            rejects: phone(json!({"protocol": "SCCP", "digestUserRef": "alice"})),
            message: "a digest user applies only to SIP phones (Chapter 8)",
        },
        Case {
            kind: "Phone",
            accepts: phone(json!({"model": "7912"})),
            rejects: phone(json!({"model": "7905", "protocol": "SCCP"})),
            message: "models 7905 and 7912 run SIP only (P.7-4)",
        },
        Case {
            kind: "Phone",
            accepts: phone(json!({"model": "7960", "configEncryption": {"symmetricKey": {"name": "k", "key": "key"}}})),
            rejects: phone(json!({"model": "7961", "configEncryption": {"symmetricKey": {"name": "k", "key": "key"}}})),
            message: "a manual symmetric key applies only to SIP phones of models 7905, 7912, 7940 and 7960 (Table 7-2)",
        },
        Case {
            kind: "Phone",
            accepts: phone(json!({"model": "7970", "hardening": {"pcVoiceVlanAccess": "Disabled"}})),
            rejects: phone(json!({"model": "7912", "hardening": {"pcVoiceVlanAccess": "Disabled"}})),
            message: "model 7912 cannot disable PC Voice VLAN Access (P.9-2)",
        },
        Case {
            kind: "Phone",
            accepts: phone(json!({"capf": {"certificateOperation": "Troubleshoot", "operationCompletesBy": "2030-01-01T00:00:00Z"}})),
            rejects: phone(json!({"capf": {"certificateOperation": "Delete"}})),
            message: "a certificate operation other than NoPendingOperation requires operationCompletesBy (Table 6-2)",
        },
        Case {
            kind: "SipTrunkSecurityProfile",
            accepts: json!({"incomingTransportType": "TLS", "outgoingTransportType": "TLS", "deviceSecurityMode": "Authenticated"}),
            rejects: json!({"incomingTransportType": "TLS", "outgoingTransportType": "UDP"}),
            message: "Incoming Transport Type TLS requires Outgoing Transport Type TLS (Table 14-1)",
        },
        Case {
            kind: "SipTrunkSecurityProfile",
            accepts: json!({"deviceSecurityMode": "Encrypted", "incomingTransportType": "TLS", "outgoingTransportType": "TLS"}),
            rejects: json!({"deviceSecurityMode": "Encrypted", "incomingTransportType": "TCPAndUDP", "outgoingTransportType": "TLS"}),
            message: "Authenticated or Encrypted device security mode requires incoming and outgoing transport TLS (Table 14-1)",
        },
        Case {
            kind: "SipTrunkSecurityProfile",
            accepts: json!({"incomingTransportType": "TLS", "outgoingTransportType": "TLS", "deviceSecurityMode": "Encrypted", "x509SubjectName": "my_cm1, my_cm2"}),
            rejects: json!({"incomingTransportType": "TCPAndUDP", "outgoingTransportType": "TLS", "x509SubjectName": "my_cm1"}),
            message: "X.509 Subject Name applies only when incoming and outgoing transport are TLS (Table 14-1)",
        },
        Case {
            kind: "SipTrunkSecurityProfile",
            accepts: json!({"enableDigestAuthentication": true, "enableApplicationLevelAuthorization": true}),
            rejects: json!({"enableApplicationLevelAuthorization": true}),
            message: "Enable Application Level Authorization requires Enable Digest Authentication (Table 14-1)",
        },
        Case {
            kind: "SipTrunk",
            accepts: json!({"securityProfileRef": "p", "destinations": [{"address": "sbc.example"}], "srtpAllowed": false}),
            rejects: json!({"securityProfileRef": "p", "destinations": [{"address": "sbc.example"}], "srtpAllowed": true}),
            message: "SRTP Allowed cannot be set on a SIP trunk: SIP trunks carry RTP, and TLS protects signalling only (P.13-4)",
        },
        Case {
            kind: "EndUser",
            accepts: json!({"ctiGroups": ["StandardCtiEnabled", "StandardCtiSecureConnection", "StandardCtiAllowReceptionOfSrtpKeyMaterial"]}),
            rejects: json!({"ctiGroups": ["StandardCtiEnabled", "StandardCtiAllowReceptionOfSrtpKeyMaterial"]}),
            message: "Standard CTI Allow Reception of SRTP Key Material requires Standard CTI Enabled and Standard CTI Secure Connection (P.11-9)",
        },
        Case {
            kind: "ApplicationUser",
            accepts: json!({"ctiGroups": ["StandardCtiEnabled", "StandardCtiSecureConnection"]}),
            rejects: json!({"ctiGroups": ["StandardCtiSecureConnection"]}),
            message: "Standard CTI Secure Connection requires Standard CTI Enabled (P.11-9)",
        },
        Case {
            kind: "ApplicationUser",
            accepts: json!({"capfProfiles": [{"instanceId": "app-1", "certificateOperation": "InstallUpgrade", "authenticationString": {"name": "s", "key": "k"}, "operationCompletesBy": "2030-01-01T00:00:00Z"}]}),
            rejects: json!({"capfProfiles": [{"instanceId": "app-1", "certificateOperation": "InstallUpgrade", "operationCompletesBy": "2030-01-01T00:00:00Z"}]}),
            message: "certificate operation InstallUpgrade requires authenticationString and operationCompletesBy (Table 11-2)",
        },
        Case {
            kind: "EndUser",
            accepts: json!({"capfProfiles": [{"instanceId": "app-1"}]}),
            rejects: json!({"capfProfiles": [{"instanceId": "app-1", "certificateOperation": "InstallUpgrade", "authenticationString": {"name": "s", "key": "k"}}]}),
            message: "certificate operation InstallUpgrade requires authenticationString and operationCompletesBy (Table 11-2)",
        },
        Case {
            kind: "H323Gateway",
            accepts: json!({"address": "gw.example", "srtpAllowed": true, "enableOutboundFastStart": false, "ipsec": {"mode": "Infrastructure"}}),
            rejects: json!({"address": "gw.example", "srtpAllowed": true, "enableOutboundFastStart": true}),
            message: "srtpAllowed and enableOutboundFastStart cannot both be true: SRTP Allowed disables Enable Outbound FastStart (P.13-3)",
        },
        Case {
            kind: "H323Gateway",
            accepts: json!({"kind": "H225TrunkGatekeeperControlled", "address": "gk.example", "enableOutboundFastStart": true}),
            rejects: json!({"kind": "H225TrunkGatekeeperControlled", "address": "gk.example", "srtpAllowed": true, "enableOutboundFastStart": true, "mtpRequired": true}),
            message: "srtpAllowed and enableOutboundFastStart cannot both be true: SRTP Allowed disables Enable Outbound FastStart (P.13-3)",
        },
    ]
}

fn messages(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    kind_schemas()[kind].check(object).into_iter().map(|v| v.message).collect()
}

#[test]
fn each_rule_accepts_one_object_and_rejects_another() {
    for case in cases() {
        let accepted = messages(&object(case.kind, &case.accepts));
        assert!(accepted.is_empty(), "{} {}: the accepted object was rejected: {accepted:?}", case.kind, case.message);
        let rejected = messages(&object(case.kind, &case.rejects));
        assert_eq!(rejected, vec![case.message.to_string()], "{}: the rejected object gave other messages", case.kind);
    }
}

/// Every rule message in the generated CRDs, by kind.
fn rule_messages(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                out.extend(rules.iter().filter_map(|r| r["message"].as_str().map(String::from)));
            }
            map.values().for_each(|v| rule_messages(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rule_messages(v, out)),
        _ => {}
    }
}

const TRANSITION_RULES: [&str; 2] = ["protocol is immutable (P.5-1)", "macAddress is immutable: create a new Phone (P.5-9)"];

#[test]
fn every_rule_of_every_crd_has_a_case() {
    let mut declared = BTreeSet::new();
    for schema in kind_schemas().values() {
        rule_messages(&schema.openapi, &mut declared);
    }
    let covered: BTreeSet<String> = cases().iter().map(|c| c.message.to_string()).chain(TRANSITION_RULES.map(String::from)).collect();
    let missing: Vec<_> = declared.difference(&covered).collect();
    assert!(missing.is_empty(), "CEL rules without a test case: {missing:#?}");
    assert!(declared.len() >= 25, "expected the full rule set, found {}", declared.len());
}

#[test]
fn immutable_fields_reject_a_change() {
    let validator = Validator::new();
    for (kind, field, old, new, message) in [
        ("PhoneSecurityProfile", "protocol", json!({"protocol": "SIP"}), json!({"protocol": "SCCP"}), TRANSITION_RULES[0]),
        ("Phone", "macAddress", phone(json!({})), phone(json!({"macAddress": "001122334466"})), TRANSITION_RULES[1]),
    ] {
        let schema = &kind_schemas()[kind].openapi;
        let (old, new) = (object(kind, &old), object(kind, &new));
        assert!(validator.validate(schema, &old, Some(&old)).is_ok(), "{kind}: an unchanged {field} was rejected");
        let errors = validator.validate(schema, &new, Some(&old)).expect_err("a changed field must be rejected");
        assert_eq!(errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), vec![message]);
    }
}
