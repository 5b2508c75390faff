use super::*;
use proptest::prelude::*;

fn decode_front(bytes: &[u8], startup_done: bool) -> (FrontendMessage, usize) {
    let mut d = FrontendDecoder::new();
    if startup_done {
        d.in_startup = false;
    }
    d.decode(bytes).unwrap().expect("complete message")
}

#[test]
fn golden_startup_and_ssl_request() {
    // SSLRequest: length 8, code 1234.5679 = 80877103 = 0x04D2162F.
    let mut out = Vec::new();
    FrontendMessage::SslRequest.encode(&mut out);
    assert_eq!(out, [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]);

    let startup = FrontendMessage::Startup {
        params: vec![("user".into(), "x".into())],
    };
    let mut out = Vec::new();
    startup.encode(&mut out);
    let mut expected = vec![0, 0, 0, 0, 0, 3, 0, 0];
    expected.extend_from_slice(b"user\0x\0\0");
    expected[3] = expected.len() as u8;
    assert_eq!(out, expected);
    assert_eq!(decode_front(&out, false), (startup, out.len()));
}

#[test]
fn golden_backend_frames() {
    let cases: Vec<(BackendMessage, Vec<u8>)> = vec![
        (BackendMessage::EncryptionRefused, b"N".to_vec()),
        (
            BackendMessage::AuthenticationOk,
            vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0],
        ),
        (
            BackendMessage::AuthenticationCleartextPassword,
            vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3],
        ),
        (
            BackendMessage::ReadyForQuery { status: b'I' },
            vec![b'Z', 0, 0, 0, 5, b'I'],
        ),
        (
            BackendMessage::CopyBothResponse,
            vec![b'W', 0, 0, 0, 7, 1, 0, 0],
        ),
        (BackendMessage::CopyDone, vec![b'c', 0, 0, 0, 4]),
        (
            BackendMessage::CommandComplete("SHOW".into()),
            b"C\0\0\0\x09SHOW\0".to_vec(),
        ),
        (
            BackendMessage::DataRow(vec![Some(b"42".to_vec()), None]),
            vec![
                b'D', 0, 0, 0, 16, 0, 2, 0, 0, 0, 2, b'4', b'2', 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    ];
    for (msg, bytes) in cases {
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, bytes, "{msg:?}");
        if msg != BackendMessage::EncryptionRefused {
            assert_eq!(
                BackendDecoder::new().decode(&out).unwrap(),
                Some((msg, out.len()))
            );
        }
    }
}

#[test]
fn golden_error_response_fields() {
    let mut out = Vec::new();
    BackendMessage::ErrorResponse(ErrorFields::error("53300", "too many")).encode(&mut out);
    let body = b"SERROR\0VERROR\0C53300\0Mtoo many\0\0";
    assert_eq!(out[0], b'E');
    assert_eq!(
        u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
        4 + body.len()
    );
    assert_eq!(&out[5..], body);
}

#[test]
fn golden_query_and_copy_data() {
    let mut out = Vec::new();
    FrontendMessage::Query("SHOW x".into()).encode(&mut out);
    assert_eq!(out, b"Q\0\0\0\x0bSHOW x\0");
    let mut out = Vec::new();
    FrontendMessage::CopyData(vec![1, 2, 3]).encode(&mut out);
    assert_eq!(out, [b'd', 0, 0, 0, 7, 1, 2, 3]);
}

#[test]
fn partial_input_asks_for_more_at_every_split() {
    let mut out = Vec::new();
    FrontendMessage::Query("select 1".into()).encode(&mut out);
    for cut in 0..out.len() {
        let mut d = FrontendDecoder { in_startup: false };
        assert_eq!(d.decode(&out[..cut]).unwrap(), None, "cut at {cut}");
    }
}

#[test]
fn oversized_and_undersized_frames_are_typed_errors() {
    let mut d = FrontendDecoder { in_startup: false };
    let huge = [b'd', 0x7f, 0xff, 0xff, 0xff];
    assert!(matches!(
        d.decode(&huge),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    let tiny = [b'd', 0, 0, 0, 3];
    assert!(matches!(
        d.decode(&tiny),
        Err(ProtocolError::FrameTooShort { len: 3 })
    ));
    let mut s = FrontendDecoder::new();
    assert!(matches!(
        s.decode(&[0, 0, 0x40, 0, 0, 3, 0, 0]),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert!(matches!(
        FrontendDecoder::new().decode(&[0, 0, 0, 8, 0, 2, 0, 0]),
        Err(ProtocolError::UnsupportedVersion { major: 2, minor: 0 })
    ));
    assert!(matches!(
        d.decode(b"Z\0\0\0\x04"),
        Err(ProtocolError::UnknownMessageType('Z'))
    ));
}

fn arb_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _./=-]{0,40}"
}

fn arb_frontend() -> impl Strategy<Value = FrontendMessage> {
    prop_oneof![
        Just(FrontendMessage::SslRequest),
        Just(FrontendMessage::GssEncRequest),
        (any::<u32>(), any::<u32>())
            .prop_map(|(pid, secret)| FrontendMessage::CancelRequest { pid, secret }),
        prop::collection::vec(("[a-z_]{1,12}", arb_string()), 0..5)
            .prop_map(|params| FrontendMessage::Startup { params }),
        arb_string().prop_map(FrontendMessage::Password),
        arb_string().prop_map(FrontendMessage::Query),
        prop::collection::vec(any::<u8>(), 0..9000).prop_map(FrontendMessage::CopyData),
        Just(FrontendMessage::CopyDone),
        arb_string().prop_map(FrontendMessage::CopyFail),
        Just(FrontendMessage::Terminate),
    ]
}

fn arb_backend() -> impl Strategy<Value = BackendMessage> {
    let field = (
        "[a-z_]{1,12}",
        any::<u32>(),
        any::<i16>(),
        any::<u32>(),
        any::<i16>(),
        any::<i32>(),
        any::<i16>(),
    )
        .prop_map(
            |(name, table_oid, column, type_oid, type_len, type_mod, format)| FieldDescription {
                name,
                table_oid,
                column,
                type_oid,
                type_len,
                type_mod,
                format,
            },
        );
    prop_oneof![
        Just(BackendMessage::AuthenticationOk),
        Just(BackendMessage::AuthenticationCleartextPassword),
        ("[a-z_]{1,12}", arb_string())
            .prop_map(|(name, value)| BackendMessage::ParameterStatus { name, value }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(pid, secret)| BackendMessage::BackendKeyData { pid, secret }),
        any::<u8>().prop_map(|status| BackendMessage::ReadyForQuery { status }),
        Just(BackendMessage::CopyBothResponse),
        prop::collection::vec(any::<u8>(), 0..9000).prop_map(BackendMessage::CopyData),
        Just(BackendMessage::CopyDone),
        ("[A-Z]{1,7}", "[0-9A-Z]{5}", arb_string()).prop_map(|(severity, code, message)| {
            BackendMessage::ErrorResponse(ErrorFields {
                severity,
                code,
                message,
            })
        }),
        prop::collection::vec(field, 0..6).prop_map(BackendMessage::RowDescription),
        prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            0..6
        )
        .prop_map(BackendMessage::DataRow),
        arb_string().prop_map(BackendMessage::CommandComplete),
    ]
}

proptest! {
    #[test]
    fn frontend_messages_round_trip(msgs in prop::collection::vec(arb_frontend(), 1..6)) {
        // A stream of messages, each decoded from a buffer holding it and whatever follows.
        let mut wire = Vec::new();
        for m in &msgs {
            m.encode(&mut wire);
        }
        let mut at = 0;
        for m in &msgs {
            let startup_like = matches!(m, FrontendMessage::SslRequest | FrontendMessage::GssEncRequest
                | FrontendMessage::CancelRequest { .. } | FrontendMessage::Startup { .. });
            let mut d = FrontendDecoder { in_startup: startup_like };
            let (got, used) = d.decode(&wire[at..]).unwrap().expect("complete");
            prop_assert_eq!(&got, m);
            at += used;
        }
        prop_assert_eq!(at, wire.len());
    }

    #[test]
    fn backend_messages_round_trip(m in arb_backend()) {
        let mut wire = Vec::new();
        m.encode(&mut wire);
        let (got, used) = BackendDecoder::new().decode(&wire).unwrap().expect("complete");
        prop_assert_eq!(got, m);
        prop_assert_eq!(used, wire.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), startup in any::<bool>()) {
        let mut d = FrontendDecoder { in_startup: startup };
        let _ = d.decode(&bytes);
        let _ = BackendDecoder::new().decode(&bytes);
        let _ = BackendDecoder::decode_encryption_answer(&bytes);
    }

    #[test]
    fn used_never_exceeds_input(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, used))) = BackendDecoder::new().decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }
}
