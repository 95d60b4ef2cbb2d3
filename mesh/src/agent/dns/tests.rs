//! Tests of [`super::answer`] and of a [`super::DnsServer`] on loopback.

use super::*;
use hickory_proto::op::Query;
use proptest::prelude::*;
use ResponseCode::{NXDomain, NoError, Refused};

fn svc(name: &str, addr: &str) -> (String, IpAddr) {
    (name.to_string(), addr.parse().unwrap())
}

fn records() -> DnsRecords {
    // A duplicate, an upper-case name and an invalid one.
    let all = [
        ("billing", "100.64.1.5"),
        ("billing", "fd00::5"),
        ("billing", "100.64.1.5"),
        ("DB", "100.64.2.7"),
        ("not a name..", "100.64.2.8"),
    ]
    .map(|(n, a)| svc(n, a));
    DnsRecords::new("Weft.Internal.", all)
}

fn many(n: u16) -> DnsRecords {
    let addrs = (1..=n).map(|i| {
        (
            "big".to_string(),
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i]),
        )
    });
    DnsRecords::new("weft.internal", addrs)
}

fn request(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let mut name = Name::from_ascii(name).unwrap();
    name.set_fqdn(true);
    m.add_query(Query::query(name, rtype));
    m
}

fn ask(records: &DnsRecords, m: &Message) -> Message {
    Message::from_vec(&answer(records, &m.to_vec().unwrap()).unwrap()).unwrap()
}

/// The response's code, AA bit and addresses, after checking what every
/// response echoes (ID, opcode, question, RD; RA clear; names' case).
fn outcome(name: &str, rtype: RecordType) -> (ResponseCode, bool, Vec<IpAddr>) {
    let req = request(name, rtype);
    let r = ask(&records(), &req);
    let m = r.metadata;
    assert_eq!(
        (m.id, m.message_type, m.op_code),
        (0xbeef, MessageType::Response, OpCode::Query)
    );
    assert!(m.recursion_desired && !m.recursion_available && !m.truncation);
    assert_eq!(r.queries, req.queries);
    let owner = req.queries[0].name();
    assert!(r
        .answers
        .iter()
        .all(|a| a.ttl == TTL && a.name.eq_case(owner)));
    (
        m.response_code,
        m.authoritative,
        r.answers.iter().filter_map(|a| a.data.ip_addr()).collect(),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_and_aaaa_answer_the_services_addresses_of_that_family() {
    let a = outcome("billing.weft.internal.", RecordType::A);
    assert_eq!(a, (NoError, true, vec![ip("100.64.1.5")]));
    let aaaa = outcome("billing.weft.internal", RecordType::AAAA);
    assert_eq!(aaaa, (NoError, true, vec![ip("fd00::5")]));
}

#[test]
fn names_are_case_insensitive_and_answers_keep_the_query_case() {
    let r = outcome("BiLLing.WEFT.internal.", RecordType::A);
    assert_eq!(r, (NoError, true, vec![ip("100.64.1.5")]));
    assert_eq!(
        outcome("db.weft.internal", RecordType::A),
        (NoError, true, vec![ip("100.64.2.7")])
    );
}

#[test]
fn existing_names_without_such_records_are_nodata() {
    let nodata = (NoError, true, vec![]);
    assert_eq!(outcome("billing.weft.internal.", RecordType::MX), nodata);
    assert_eq!(outcome("db.weft.internal.", RecordType::AAAA), nodata);
    assert_eq!(outcome("weft.internal.", RecordType::A), nodata);
    let nested = DnsRecords::new("weft.internal", [svc("a.b", "10.0.0.1")]);
    let r = ask(&nested, &request("b.weft.internal.", RecordType::A));
    assert_eq!((r.metadata.response_code, r.answers.len()), (NoError, 0));
    let r = ask(&nested, &request("a.b.weft.internal.", RecordType::A));
    assert_eq!((r.metadata.response_code, r.answers.len()), (NoError, 1));
}

#[test]
fn unknown_names_in_the_domain_are_nxdomain() {
    let nx = (NXDomain, true, vec![]);
    assert_eq!(outcome("payroll.weft.internal.", RecordType::A), nx);
    assert_eq!(outcome("x.billing.weft.internal.", RecordType::A), nx);
}

#[test]
fn names_outside_the_domain_are_refused() {
    let refused = (Refused, false, vec![]);
    assert_eq!(outcome("example.com.", RecordType::A), refused);
    assert_eq!(outcome("billing.xweft.internal.", RecordType::A), refused);
    assert_eq!(outcome("internal.", RecordType::A), refused);
    let mut chaos = request("billing.weft.internal.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(ask(&records(), &chaos).metadata.response_code, Refused);
    let broken = DnsRecords::new("..", [svc("billing", "10.0.0.1")]);
    let r = ask(&broken, &request("billing.", RecordType::A));
    assert_eq!(r.metadata.response_code, Refused);
}

#[test]
fn other_opcodes_are_notimp_and_several_questions_formerr() {
    let mut status = request("billing.weft.internal.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    let m = ask(&records(), &status).metadata;
    assert_eq!(
        (m.response_code, m.id, m.op_code),
        (ResponseCode::NotImp, 0xbeef, OpCode::Status)
    );
    let mut two = request("billing.weft.internal.", RecordType::A);
    two.add_query(request("db.weft.internal.", RecordType::A).queries[0].clone());
    assert_eq!(
        ask(&records(), &two).metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn garbage_and_responses_are_dropped() {
    assert_eq!(answer(&records(), &[]), None);
    assert_eq!(answer(&records(), &[0xbe, 0xef, 1, 0, 0, 1]), None);
    let mut resp = request("billing.weft.internal.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert_eq!(answer(&records(), &resp.to_vec().unwrap()), None);
}

#[test]
fn long_answers_are_truncated_to_what_udp_allows() {
    // 60 AAAA records take about 1.7 KB.
    let plain = request("big.weft.internal.", RecordType::AAAA)
        .to_vec()
        .unwrap();
    let bytes = answer(&many(60), &plain).unwrap();
    let r = Message::from_vec(&bytes).unwrap();
    assert!(bytes.len() <= 512 && r.metadata.truncation && r.answers.is_empty());
    assert_eq!((r.queries.len(), r.metadata.authoritative), (1, true));
    let r = Message::from_vec(&respond(&many(60), &plain, true).unwrap()).unwrap();
    assert!(
        !r.metadata.truncation && r.answers.len() == 60,
        "TCP carries all"
    );
    // EDNS offers 4096; we send at most 1232: 30 records fit, 60 do not.
    let mut edns = request("big.weft.internal.", RecordType::AAAA);
    edns.set_edns(Edns::new().set_max_payload(4096).clone());
    let bytes = answer(&many(60), &edns.to_vec().unwrap()).unwrap();
    let r = Message::from_vec(&bytes).unwrap();
    assert!(bytes.len() <= 1232 && r.metadata.truncation && r.edns.is_some());
    let r = ask(&many(30), &edns);
    assert!(!r.metadata.truncation && r.answers.len() == 30);
    assert_eq!(r.edns.map(|e| e.max_payload()), Some(MAX_UDP_PAYLOAD));
}

#[test]
fn unknown_edns_versions_are_badvers() {
    let mut req = request("billing.weft.internal.", RecordType::A);
    req.set_edns(Edns::new().set_version(1).clone());
    let r = ask(&records(), &req);
    // BADVERS is 16 on the wire, which hickory decodes as BADSIG.
    assert_eq!(
        u16::from(r.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(r.answers.is_empty() && r.edns.is_some());
}

fn check_reply(input: &[u8]) -> Result<(), TestCaseError> {
    if let Some(reply) = answer(&records(), input) {
        prop_assert!(reply.len() <= 512);
        let reply = Message::from_vec(&reply).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
        prop_assert_eq!(&reply.metadata.id.to_be_bytes()[..], &input[..2]);
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_reply(&bytes)?;
    }

    #[test]
    fn mangled_queries_never_panic(edits in proptest::collection::vec(any::<(usize, u8)>(), 1..6)) {
        let mut q = request("billing.weft.internal.", RecordType::AAAA);
        q.set_edns(Edns::new());
        let mut bytes = q.to_vec().unwrap();
        let len = bytes.len();
        for (at, byte) in edits {
            bytes[at % len] = byte;
        }
        check_reply(&bytes)?;
    }
}

#[tokio::test]
async fn serves_udp_and_tcp_and_follows_record_updates() {
    let store = Arc::new(ArcSwap::from_pointee(records()));
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), store.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = request("billing.weft.internal.", RecordType::A)
        .to_vec()
        .unwrap();
    let wait = Duration::from_secs(5);
    let ask_udp = || async {
        udp.send_to(&query, addr).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(wait, udp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap().answers[0]
            .data
            .ip_addr()
    };
    assert_eq!(ask_udp().await, Some(ip("100.64.1.5")));
    store.store(Arc::new(DnsRecords::new(
        "weft.internal",
        [svc("billing", "100.64.9.9")],
    )));
    assert_eq!(ask_udp().await, Some(ip("100.64.9.9")));

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        tcp.write_all(&framed).await.unwrap();
        let mut reply = vec![0u8; usize::from(tcp.read_u16().await.unwrap())];
        tcp.read_exact(&mut reply).await.unwrap();
        let r = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (r.metadata.id, r.answers[0].data.ip_addr()),
            (0xbeef, Some(ip("100.64.9.9")))
        );
    }
    // A malformed query closes the connection.
    tcp.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let closed = tokio::time::timeout(wait, tcp.read_to_end(&mut Vec::new()))
        .await
        .unwrap();
    assert_eq!(closed.ok(), Some(0));
}

/// Found by the `dns` fuzz target: a 3.5 KB query with many questions got
/// a reply past the 512 bytes a client without EDNS accepts, truncated or
/// not. One question at most is echoed now.
#[test]
fn a_query_with_many_questions_gets_a_small_reply() {
    let query = include_bytes!("many-questions.bin");
    if let Some(reply) = answer(&records(), query) {
        assert!(reply.len() <= 512, "{} bytes", reply.len());
    }
    let mut m = request("db.weft.internal", RecordType::A);
    for i in 0..100 {
        m.add_query(Query::query(
            Name::from_ascii(format!("n{i}.weft.internal.")).unwrap(),
            RecordType::A,
        ));
    }
    let r = ask(&records(), &m);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(r.queries.len() <= 1);
}
