//! REGISTER from phones, answered where rsipstack hands over what a transport received, before its
//! transaction layer. The registrar's answer depends on the request alone, so it needs no server
//! transaction: a registration then costs two answers, not two transactions with their tasks, maps
//! and timers (the way Kamailio's registrar answers). A retransmission is answered again from the
//! start: a second 401 with a new nonce, or, when the 200 to an answer was lost, the same verdict,
//! since the nonce count of that same request is not a replay (`digest::RequestId`).
//! Everything else, and whatever a trunk sends (Table 14-1), goes on to the transaction layer.

use std::sync::{Arc, Weak};

use rsipstack::sip::{Method, SipMessage};
use rsipstack::transaction::endpoint::TransportEventInspector;
use rsipstack::transport::TransportEvent;

use super::server::{SipService, TrunkOrigin};

pub(super) struct StatelessRegistrar {
    /// Weak: the endpoint that holds this lives inside the service's `serve`.
    service: Weak<SipService>,
}

impl StatelessRegistrar {
    pub(super) fn new(service: &Arc<SipService>) -> StatelessRegistrar {
        StatelessRegistrar { service: Arc::downgrade(service) }
    }
}

#[async_trait::async_trait]
impl TransportEventInspector for StatelessRegistrar {
    async fn handle(&self, event: TransportEvent) -> Option<TransportEvent> {
        let TransportEvent::Incoming(SipMessage::Request(request), connection, _) = &event else { return Some(event) };
        if request.method != Method::Register {
            return Some(event);
        }
        let Some(service) = self.service.upgrade() else { return Some(event) };
        if !matches!(service.trunk_origin(Some(connection)), TrunkOrigin::None) {
            return Some(event);
        }
        let TransportEvent::Incoming(SipMessage::Request(request), connection, _) = event else { return None };
        service.register_statelessly(request, connection).await;
        None
    }
}
