-- A store made by the gateway of 50e4256 (the last commit of 2026-11-24), stopped with SIGKILL: `sqlite3 gateway.sqlite .dump`.
-- Made in a worktree of 50e4256, with its tests/gateway/sitekit.py and `lifeline gateway`, the district broker down:
-- gas1 and gas2 (class gas, keys sha256("lifeline upgrade fixture " + id); no site key then) sent a birth,
-- then seq 0-7 each at ch4 1 and 2 %LEL, gas1 seq 8-9 at 30 %LEL (orange), gas2 seq 8 sealed with a wrong key
-- (quarantined, bad-mac). Its telemetry rows hold the readings alone ("e"), from before the device's message ("m").
-- Kept whole: a few rows a table. tests/gateway/test_store_upgrade.py loads it.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, topic TEXT NOT NULL, size INTEGER NOT NULL, raw BLOB NOT NULL);
INSERT INTO quarantine VALUES(1,1796694537.0549883842,'bad-mac','MAC does not verify for kid b''gas2''','lifeline/v1/s1/gas2/data',72,X'd18443a10104a10444676173325830a4616581a400636368340164254c454c02f9400006fb41dac5d866c24a30616b6464617461637365710864626f6f740148d9143d984e2ee9f7');
CREATE TABLE seq_state (dev TEXT PRIMARY KEY, state TEXT NOT NULL);
INSERT INTO seq_state VALUES('gas1','[-1, 0, 9, [], [1, 0, true], 1, 0, 0, 0]');
INSERT INTO seq_state VALUES('gas2','[-1, 0, 7, [], [1, 0, true], 1, 0, 0, 0]');
CREATE TABLE device_health (dev TEXT PRIMARY KEY, health TEXT NOT NULL);
INSERT INTO device_health VALUES('gas1','{"dev": "gas1", "online": true, "boot": 1, "boot_epoch": null, "fw": "1.0.0", "prof": "gas", "rst": "power-on", "last_seen": 1796694537.0549884, "rssi": -61.0, "batt": 3.9, "ip": "", "sleep_s": 0.0, "births": 1, "deaths": 0, "messages": 11}');
INSERT INTO device_health VALUES('gas2','{"dev": "gas2", "online": true, "boot": 1, "boot_epoch": null, "fw": "1.0.0", "prof": "gas", "rst": "power-on", "last_seen": 1796694537.0549884, "rssi": -61.0, "batt": 3.9, "ip": "", "sleep_s": 0.0, "births": 1, "deaths": 0, "messages": 9}');
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
INSERT INTO alarm_track VALUES('device','gas1','ch4','level','{"runs":{"1":[1796694425.035778,1796694426.035778,2],"2":[1796694425.035778,1796694426.035778,2],"3":[1796694425.035778,1796694426.035778,2]},"latest":1796694426.035778}');
INSERT INTO alarm_track VALUES('device','gas2','ch4','level','{"runs":{},"latest":1796694417.035778}');
CREATE TABLE alarm_active (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL, kind TEXT NOT NULL,
    level INTEGER NOT NULL, raised_at REAL NOT NULL, acked_at REAL, resends INTEGER NOT NULL, next_resend REAL,
    last TEXT NOT NULL, UNIQUE (scope, subject, metric, kind));
INSERT INTO alarm_active VALUES('3598882a1a2044c4b75505fca03f17ad','device','gas1','ch4','level',3,1796694537.0549883842,NULL,0,1796694597.0549883841,'{"id":"3598882a1a2044c4b75505fca03f17ad","ev":"raised","kind":"level","dev":"gas1","cls":"gas","metric":"ch4","level":"orange","prev":null,"value":30.0,"reading":30.0,"rule":"gas.ch4","rver":1,"t_dev":1796694426.035778,"t_gw":1796694537.0549884,"resend":0,"unit":"%LEL"}');
CREATE TABLE command_pending (dev TEXT NOT NULL, id INTEGER NOT NULL, op TEXT NOT NULL, sent_at REAL NOT NULL, deadline REAL NOT NULL, PRIMARY KEY (dev, id));
CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lane INTEGER NOT NULL,
        kind TEXT NOT NULL,
        t REAL NOT NULL,
        dev TEXT,
        seq INTEGER,
        seq_hi INTEGER,
        boot INTEGER,
        msgs INTEGER NOT NULL DEFAULT 1,
        thinned INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL);
INSERT INTO outbox VALUES(1,1,'state',1796694537.0414862632,NULL,NULL,NULL,NULL,1,0,X'ab636465766467617331627374666f6e6c696e6564626f6f740163736571006174fb41dac5d88242a1266872657461696e6564f462667765312e302e306470726f66636761736372737468706f7765722d6f6e6472737369383c6462617474fb400f333333333333');
INSERT INTO outbox VALUES(2,1,'state',1796694537.0444512366,NULL,NULL,NULL,NULL,1,0,X'ab636465766467617332627374666f6e6c696e6564626f6f740163736571006174fb41dac5d88242d42d6872657461696e6564f462667765312e302e306470726f66636761736372737468706f7765722d6f6e6472737369383c6462617474fb400f333333333333');
INSERT INTO outbox VALUES(3,2,'telemetry',1796694537.0442001819,'gas1',0,0,1,1,0,X'a4636465766467617331637365710064626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d864424a30');
INSERT INTO outbox VALUES(4,2,'telemetry',1796694537.0442001819,'gas2',0,0,1,1,0,X'a4636465766467617332637365710064626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d864424a30');
INSERT INTO outbox VALUES(5,2,'telemetry',1796694537.0442001819,'gas1',1,1,1,1,0,X'a4636465766467617331637365710164626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d864824a30');
INSERT INTO outbox VALUES(6,2,'telemetry',1796694537.0477728843,'gas2',1,1,1,1,0,X'a4636465766467617332637365710164626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d864824a30');
INSERT INTO outbox VALUES(7,2,'telemetry',1796694537.0477728843,'gas1',2,2,1,1,0,X'a4636465766467617331637365710264626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d864c24a30');
INSERT INTO outbox VALUES(8,2,'telemetry',1796694537.0477728843,'gas2',2,2,1,1,0,X'a4636465766467617332637365710264626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d864c24a30');
INSERT INTO outbox VALUES(9,2,'telemetry',1796694537.0477728843,'gas1',3,3,1,1,0,X'a4636465766467617331637365710364626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d865024a30');
INSERT INTO outbox VALUES(10,2,'telemetry',1796694537.0477728843,'gas2',3,3,1,1,0,X'a4636465766467617332637365710364626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d865024a30');
INSERT INTO outbox VALUES(11,2,'telemetry',1796694537.0513100623,'gas1',4,4,1,1,0,X'a4636465766467617331637365710464626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d865424a30');
INSERT INTO outbox VALUES(12,2,'telemetry',1796694537.0513100623,'gas2',4,4,1,1,0,X'a4636465766467617332637365710464626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d865424a30');
INSERT INTO outbox VALUES(13,2,'telemetry',1796694537.0513100623,'gas1',5,5,1,1,0,X'a4636465766467617331637365710564626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d865824a30');
INSERT INTO outbox VALUES(14,2,'telemetry',1796694537.0513100623,'gas2',5,5,1,1,0,X'a4636465766467617332637365710564626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d865824a30');
INSERT INTO outbox VALUES(15,2,'telemetry',1796694537.0513100623,'gas1',6,6,1,1,0,X'a4636465766467617331637365710664626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d865c24a30');
INSERT INTO outbox VALUES(16,2,'telemetry',1796694537.0513100623,'gas2',6,6,1,1,0,X'a4636465766467617332637365710664626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d865c24a30');
INSERT INTO outbox VALUES(17,2,'telemetry',1796694537.0513100623,'gas1',7,7,1,1,0,X'a4636465766467617331637365710764626f6f7401616581a5006363683402fb3ff00000000000000164254c454c2165676173313a22fb41dac5d866024a30');
INSERT INTO outbox VALUES(18,2,'telemetry',1796694537.0549883842,'gas2',7,7,1,1,0,X'a4636465766467617332637365710764626f6f7401616581a5006363683402fb40000000000000000164254c454c2165676173323a22fb41dac5d866024a30');
INSERT INTO outbox VALUES(19,2,'telemetry',1796694537.0549883842,'gas1',8,8,1,1,0,X'a4636465766467617331637365710864626f6f7401616581a5006363683402fb403e0000000000000164254c454c2165676173313a22fb41dac5d866424a30');
INSERT INTO outbox VALUES(20,0,'alarm',1796694537.0549883842,NULL,NULL,NULL,NULL,1,0,X'b06269647820333539383838326131613230343463346237353530356663613033663137616462657666726169736564646b696e64656c6576656c63646576646761733163636c7363676173666d657472696363636834656c6576656c666f72616e67656470726576f66576616c7565fb403e0000000000006772656164696e67fb403e0000000000006472756c65676761732e63683464727665720165745f646576fb41dac5d866824a3064745f6777fb41dac5d8824384ee66726573656e640064756e697464254c454c');
INSERT INTO outbox VALUES(21,2,'telemetry',1796694537.0549883842,'gas1',9,9,1,1,0,X'a4636465766467617331637365710964626f6f7401616581a5006363683402fb403e0000000000000164254c454c2165676173313a22fb41dac5d866824a30');
CREATE TABLE outbox_lanes (
        lane INTEGER PRIMARY KEY, rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO outbox_lanes VALUES(0,1,268);
INSERT INTO outbox_lanes VALUES(1,2,336);
INSERT INTO outbox_lanes VALUES(2,18,2286);
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('outbox',21);
INSERT INTO sqlite_sequence VALUES('quarantine',1);
CREATE INDEX outbox_by_lane ON outbox (lane);
CREATE TRIGGER outbox_ins AFTER INSERT ON outbox BEGIN
        UPDATE outbox_lanes SET rows = rows + 1, bytes = bytes + length(NEW.body) + 64
        WHERE lane = NEW.lane; END;
CREATE TRIGGER outbox_del AFTER DELETE ON outbox BEGIN
        UPDATE outbox_lanes SET rows = rows - 1, bytes = bytes - length(OLD.body) - 64
        WHERE lane = OLD.lane; END;
COMMIT;
