//! Every TUF role parser and the client's checks: bootstrap, root update, and a trusted set
//! fed the input as timestamp, snapshot and targets.
#![no_main]
use formats::keys::KeyPair;
use formats::limits::Limits;
use formats::tuf::{self, RootMetadata, Signed, TrustedRoot, TrustedSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits::default();
    let now = formats::time_util::now();
    let k = KeyPair::from_seed([1; 32]);
    let _ = TrustedRoot::bootstrap(data, &[k.public()], now, &l);
    let root = RootMetadata::new_single_key(&k.public(), 1, now + time::Duration::days(1));
    let Ok(signed) = Signed::sign(root.clone(), &[&k]) else {
        return;
    };
    let Ok(bytes) = signed.to_canonical_bytes() else {
        return;
    };
    let Ok(mut trusted) = TrustedRoot::bootstrap(&bytes, &[k.public()], now, &l) else {
        return;
    };
    let _ = trusted.clone().update(data, &l);
    let _ = TrustedRoot::from_trusted_bytes(data, &l);
    let _ = tuf::verify_role::<tuf::TargetsMetadata>("t", data, &root, &l);
    if let Ok(mut set) = TrustedSet::new(trusted.clone(), now, l.clone()) {
        set.remember_previous(Some(data), Some(data));
        let _ = set.update_timestamp(data);
        let _ = set.update_snapshot(data);
        let _ = set.update_targets(data);
    }
    let _ = trusted.update(&bytes, &l);
});
