//! The layer's redis and mosquitto configs are the hardened ones outpostd renders on
//! the Debian-based image (src/outpost-scanner): the two must not drift apart.

use std::fs;

use outpost_scanner::StackConfig;
use outpost_yocto_tests::layer_dir;

fn layer_file(rel: &str) -> String {
    let p = layer_dir().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn redis_conf_equals_the_rendered_one() {
    let rendered = StackConfig::device().render_redis();
    assert_eq!(
        layer_file("recipes-extended/redis/files/redis-openvas.conf"),
        rendered,
        "yocto/meta-outpost's redis config differs from StackConfig::render_redis()"
    );
}

#[test]
fn mosquitto_conf_and_acl_equal_the_rendered_ones() {
    // On the Yocto image the broker's files live in /etc/mosquitto, not in /run.
    let mut cfg = StackConfig::device();
    cfg.config_dir = "/etc/mosquitto".into();
    assert_eq!(
        layer_file("recipes-connectivity/mosquitto/files/outpost-mosquitto.conf"),
        cfg.render_mosquitto(),
        "yocto/meta-outpost's mosquitto.conf differs from StackConfig::render_mosquitto()"
    );
    assert_eq!(
        layer_file("recipes-connectivity/mosquitto/files/mosquitto.acl"),
        cfg.render_acl(),
        "yocto/meta-outpost's mosquitto.acl differs from StackConfig::render_acl()"
    );
}
