-- A store made by the gateway of b5b83f9 (the last commit of 2026-12-06), stopped with SIGTERM: `sqlite3 gateway.sqlite .dump`.
-- Made in a worktree of b5b83f9, with its own virtual-site kit and `lifeline gateway`, the district broker down:
-- gas1 and gas2 (class gas, keys sha256("lifeline upgrade fixture " + id), the site key that of "site")
-- sent a birth, then seq 0-7 each at ch4 1 and 2 %LEL, gas1 seq 8-9 at 30 %LEL (orange), gas2 seq 8 sealed with
-- a wrong key (quarantined, bad-mac). Kept whole: a few rows a table. tests/gateway/test_store_upgrade.py loads it.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, topic TEXT NOT NULL, size INTEGER NOT NULL, raw BLOB NOT NULL);
INSERT INTO quarantine VALUES(1,1796694531.9855718612,'bad-mac','MAC does not verify for kid b''gas2''','lifeline/v1/s1/gas2/data',72,X'd18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d8657e4905616b6464617461637365710864626f6f74014812961d1116a7cff7');
CREATE TABLE seq_state (dev TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO seq_state VALUES('gas1','[-1,0,9,[],[1,0,true],1,0,0,0,1]');
INSERT INTO seq_state VALUES('gas2','[-1,0,7,[],[1,0,true],1,0,0,0,1]');
CREATE TABLE device_health (dev TEXT PRIMARY KEY, health TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO device_health VALUES('gas1','{"dev":"gas1","online":true,"boot":1,"boot_epoch":null,"fw":"1.0.0","prof":"gas","rst":"power-on","last_seen":1796694531.9841597,"rssi":-61.0,"batt":3.9,"ip":"","sleep_s":0.0,"births":1,"deaths":0,"messages":11}');
INSERT INTO device_health VALUES('gas2','{"dev":"gas2","online":true,"boot":1,"boot_epoch":null,"fw":"1.0.0","prof":"gas","rst":"power-on","last_seen":1796694531.9841597,"rssi":-61.0,"batt":3.9,"ip":"","sleep_s":0.0,"births":1,"deaths":0,"messages":9}');
CREATE TABLE alarm_ruleset (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, body TEXT NOT NULL, applied_at REAL);
INSERT INTO alarm_ruleset VALUES(1,1,'{"bridge":{"stale":{"interval_s":900,"levels":{"orange":10,"yellow":3},"will":"yellow"},"tilt_x":{"abs":true,"clear":{"blue":0.0008,"orange":0.0035,"red":0.007,"yellow":0.0017},"direction":"above","for_samples":3,"levels":{"blue":0.001,"orange":0.004,"red":0.008,"yellow":0.002},"unit":"rad"},"tilt_y":{"abs":true,"clear":{"blue":0.0008,"orange":0.0035,"red":0.007,"yellow":0.0017},"direction":"above","for_samples":3,"levels":{"blue":0.001,"orange":0.004,"red":0.008,"yellow":0.002},"unit":"rad"},"vib_peak":{"abs":true,"clear":{"orange":4.0,"red":8.0,"yellow":1.6},"direction":"above","for_samples":2,"levels":{"orange":5.0,"red":10.0,"yellow":2.0},"unit":"m/s2"},"vib_rms":{"clear":{"blue":0.4,"orange":1.6,"red":3.2,"yellow":0.8},"direction":"above","for_samples":3,"levels":{"blue":0.5,"orange":2.0,"red":4.0,"yellow":1.0},"unit":"m/s2"}},"drainage":{"cover":{"clear":{"orange":0.5},"direction":"above","levels":{"orange":0.5}},"level":{"clear":{"blue":0.9,"orange":1.9,"red":2.4,"yellow":1.4},"direction":"above","for_samples":2,"levels":{"blue":1.0,"orange":2.0,"red":2.5,"yellow":1.5},"rate":{"clear":{"orange":0.4,"yellow":0.2},"direction":"rise","levels":{"orange":1.0,"yellow":0.5},"window_s":600},"unit":"m"},"stale":{"interval_s":3600,"levels":{"orange":10,"yellow":3},"will":"yellow"}},"drone":{"ch4":{"clear":{"blue":8,"orange":20,"red":40,"yellow":16},"direction":"above","levels":{"blue":10,"orange":25,"red":50,"yellow":20},"unit":"%LEL"}},"gas":{"ch4":{"clear":{"blue":8,"orange":20,"red":40,"yellow":16},"direction":"above","for_samples":2,"levels":{"blue":10,"orange":25,"red":50,"yellow":20},"unit":"%LEL"},"stale":{"interval_s":60,"levels":{"orange":10,"yellow":3},"will":"orange"}},"rain":{"rain":{"sum":{"clear":{"blue":40,"orange":40,"red":80,"yellow":40},"levels":{"blue":50,"orange":50,"red":100,"yellow":50},"window_s":{"blue":43200,"orange":10800,"red":10800,"yellow":21600}},"unit":"mm"},"rain_rate":{"clear":{"blue":15,"orange":40,"red":65,"yellow":25},"direction":"above","for_samples":2,"levels":{"blue":20,"orange":50,"red":80,"yellow":30},"unit":"mm/h"},"stale":{"interval_s":300,"levels":{"orange":10,"yellow":3},"will":"yellow"}},"version":1,"water":{"pressure":{"clear":{"blue":170000,"orange":110000,"red":60000,"yellow":150000},"direction":"below","for_s":30,"levels":{"blue":160000,"orange":100000,"red":50000,"yellow":140000},"rate":{"clear":{"orange":20000,"red":40000},"direction":"fall","levels":{"orange":50000,"red":100000},"window_s":60},"unit":"Pa"},"stale":{"interval_s":300,"levels":{"orange":10,"yellow":3},"will":"orange"}}}',NULL);
CREATE TABLE alarm_device (
    device TEXT PRIMARY KEY, device_class TEXT NOT NULL, dead_at REAL);
INSERT INTO alarm_device VALUES('gas1','gas',NULL);
INSERT INTO alarm_device VALUES('gas2','gas',NULL);
CREATE TABLE alarm_track (
    scope TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (scope, subject, metric, kind)) WITHOUT ROWID;
INSERT INTO alarm_track VALUES('device','gas1','ch4','level','{"runs":{"1":[1796694419.9732068,1796694420.9732068,2],"2":[1796694419.9732068,1796694420.9732068,2],"3":[1796694419.9732068,1796694420.9732068,2]},"latest":1796694420.9732068}');
INSERT INTO alarm_track VALUES('device','gas2','ch4','level','{"runs":{},"latest":1796694418.9732068}');
CREATE TABLE alarm_active (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL, kind TEXT NOT NULL,
    level INTEGER NOT NULL, raised_at REAL NOT NULL, acked_at REAL, resends INTEGER NOT NULL, next_resend REAL,
    last TEXT NOT NULL, UNIQUE (scope, subject, metric, kind));
INSERT INTO alarm_active VALUES('6f4958fb9c5641c6a31b46be7c034405','device','gas1','ch4','level',3,1796694531.9841597079,NULL,0,1796694591.984159708,'{"id":"6f4958fb9c5641c6a31b46be7c034405","ev":"raised","kind":"level","dev":"gas1","cls":"gas","metric":"ch4","level":"orange","prev":null,"value":30.0,"reading":30.0,"rule":"gas.ch4","rver":1,"t_dev":1796694420.9732068,"t_gw":1796694531.9841597,"resend":0,"unit":"%LEL"}');
CREATE TABLE command_pending (dev TEXT NOT NULL, id INTEGER NOT NULL, op TEXT NOT NULL, sent_at REAL NOT NULL, deadline REAL NOT NULL, PRIMARY KEY (dev, id));
CREATE TABLE done_ranges (dev TEXT PRIMARY KEY, ranges TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO done_ranges VALUES('gas1','[[0,9]]');
INSERT INTO done_ranges VALUES('gas2','[[0,7]]');
CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lane INTEGER NOT NULL,
        kind TEXT NOT NULL,
        t REAL NOT NULL,
        msgs INTEGER NOT NULL DEFAULT 1,
        thinned INTEGER NOT NULL DEFAULT 0,
        pri INTEGER NOT NULL DEFAULT 0,
        entries INTEGER NOT NULL DEFAULT 1,
        body BLOB NOT NULL);
INSERT INTO outbox VALUES(1,1,'state',1796694531.9790692329,1,0,0,1,X'ab636465766467617331627374666f6e6c696e6564626f6f740163736571006174fb41dac5d880fea2146872657461696e6564f462667765312e302e306470726f66636761736372737468706f7765722d6f6e6472737369383c6462617474fb400f333333333333');
INSERT INTO outbox VALUES(2,1,'state',1796694531.9804048537,1,0,0,1,X'ab636465766467617332627374666f6e6c696e6564626f6f740163736571006174fb41dac5d880feba166872657461696e6564f462667765312e302e306470726f66636761736372737468706f7765722d6f6e6472737369383c6462617474fb400f333333333333');
INSERT INTO outbox VALUES(3,2,'telemetry',1796694531.9801077842,3,0,0,3,X'a4636465766467617331637365710064626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d862fe4905616b6464617461637365710064626f6f740148a78899214a779b3ea4636465766467617332637365710064626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d862fe4905616b6464617461637365710064626f6f7401486307a0b39e7a86b5a4636465766467617331637365710164626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d8633e4905616b6464617461637365710164626f6f740148f1765570c08909ec');
INSERT INTO outbox VALUES(4,2,'telemetry',1796694531.9818074703,6,0,0,6,X'a4636465766467617332637365710164626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d8633e4905616b6464617461637365710164626f6f7401487cbb32641b296b76a4636465766467617331637365710264626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d8637e4905616b6464617461637365710264626f6f740148a757c071086f56d3a4636465766467617332637365710264626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d8637e4905616b6464617461637365710264626f6f7401483a0373c8922d7b6fa4636465766467617331637365710364626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d863be4905616b6464617461637365710364626f6f740148ae2b9e72fc5191e8a4636465766467617332637365710364626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d863be4905616b6464617461637365710364626f6f7401489904de6494fc8412a4636465766467617331637365710464626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d863fe4905616b6464617461637365710464626f6f740148bd23dd67e0e6e01a');
INSERT INTO outbox VALUES(5,2,'telemetry',1796694531.9830980301,5,0,0,5,X'a4636465766467617332637365710464626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d863fe4905616b6464617461637365710464626f6f740148325430cedcb48c2da4636465766467617331637365710564626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d8643e4905616b6464617461637365710564626f6f7401487c0dd42bc73776fda4636465766467617332637365710564626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d8643e4905616b6464617461637365710564626f6f74014886a59dad52e17607a4636465766467617331637365710664626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d8647e4905616b6464617461637365710664626f6f740148aea17d9607ae621ba4636465766467617332637365710664626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d8647e4905616b6464617461637365710664626f6f740148c8b36ac1c1f0a3de');
INSERT INTO outbox VALUES(6,0,'alarm',1796694531.9841597079,1,0,0,1,X'b06269647820366634393538666239633536343163366133316234366265376330333434303562657666726169736564646b696e64656c6576656c63646576646761733163636c7363676173666d657472696363636834656c6576656c666f72616e67656470726576f66576616c7565fb403e0000000000006772656164696e67fb403e0000000000006472756c65676761732e63683464727665720165745f646576fb41dac5d8653e490564745f6777fb41dac5d880fefc7966726573656e640064756e697464254c454c');
INSERT INTO outbox VALUES(7,2,'telemetry',1796694531.9841597079,4,0,0,4,X'a4636465766467617331637365710764626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d864be4905616b6464617461637365710764626f6f740148151c048071ab0c4aa4636465766467617332637365710764626f6f7401616d5848d18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d864be4905616b6464617461637365710764626f6f740148d7c36db0d73d90bfa4636465766467617331637365710864626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f94f8006fb41dac5d864fe4905616b6464617461637365710864626f6f7401482e7a550f9aadc287a4636465766467617331637365710964626f6f7401616d5848d18443a10104a10444676173315830a4616581a400636368340164254c454c02f94f8006fb41dac5d8653e4905616b6464617461637365710964626f6f740148cbd9c2dd06ad311c');
CREATE TABLE outbox_lanes (
        lane INTEGER PRIMARY KEY, rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO outbox_lanes VALUES(0,1,268);
INSERT INTO outbox_lanes VALUES(1,2,336);
INSERT INTO outbox_lanes VALUES(2,18,2002);
CREATE TABLE outbox_counted (one INTEGER PRIMARY KEY CHECK (one = 0), id INTEGER NOT NULL);
INSERT INTO outbox_counted VALUES(0,7);
CREATE TABLE uplink_session (one INTEGER PRIMARY KEY CHECK (one = 0), n INTEGER NOT NULL);
INSERT INTO uplink_session VALUES(0,3);
CREATE TABLE ota_node (dev TEXT PRIMARY KEY, doc TEXT NOT NULL);
INSERT INTO ota_node VALUES('gas1','{"dev": "gas1", "running": "1.0.0", "born_at": 1796694531.9786425, "target": "", "done": 0, "total": 0, "asked_at": null, "outcome_v": "", "ok": null, "res": "", "outcome_at": null}');
INSERT INTO ota_node VALUES('gas2','{"dev": "gas2", "running": "1.0.0", "born_at": 1796694531.9801078, "target": "", "done": 0, "total": 0, "asked_at": null, "outcome_v": "", "ok": null, "res": "", "outcome_at": null}');
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('outbox',7);
INSERT INTO sqlite_sequence VALUES('quarantine',1);
CREATE INDEX outbox_by_lane ON outbox (lane);
CREATE TRIGGER outbox_del_entries AFTER DELETE ON outbox
        WHEN OLD.id <= (SELECT id FROM outbox_counted) BEGIN
        UPDATE outbox_lanes SET rows = rows - OLD.entries, bytes = bytes - length(OLD.body) - 64
        WHERE lane = OLD.lane; END;
COMMIT;
