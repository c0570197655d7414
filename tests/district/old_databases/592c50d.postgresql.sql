-- A district database as `lifeline district` of 592c50d (the last commit of 2026-12-07) left it on PostgreSQL:
-- its service run against a real Mosquitto, that commit's gateway forwarding a virtual site (lifeline/virtual/site.py,
-- device keys bytes([1]) * 32 for gas1 and bytes([2]) * 32 for gas2), and its desk driven through its HTTP API: gas1
-- rose orange then red, acknowledged, dispatched, reported, sent back with a correction, dispatched again, then
-- cleared; gas2's blue alarm stayed unacknowledged. Dumped with pg_dump --inserts --no-owner --no-privileges
-- after the service stopped; the users' and sessions' rows dropped, the dump's comments, and its \restrict and
-- \unrestrict lines (psql's, which a driver cannot run). tests/district/test_db_upgrade.py starts today's
-- district on it.
SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;
SET default_tablespace = '';
SET default_table_access_method = heap;
CREATE TABLE public.alarm_events (
    id bigint NOT NULL,
    alarm character varying(32) NOT NULL,
    ev character varying(16) NOT NULL,
    level character varying(16),
    prev character varying(16),
    value double precision,
    t_gw double precision NOT NULL,
    received double precision NOT NULL,
    resend integer NOT NULL,
    hist boolean NOT NULL,
    step integer
);
CREATE SEQUENCE public.alarm_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.alarm_events_id_seq OWNED BY public.alarm_events.id;
CREATE TABLE public.alarms (
    id character varying(32) NOT NULL,
    site character varying(64) NOT NULL,
    dev character varying(64) NOT NULL,
    cls character varying(16),
    metric character varying(64),
    kind character varying(16) NOT NULL,
    level character varying(16),
    peak character varying(16),
    peak_rank integer NOT NULL,
    state character varying(16) NOT NULL,
    hist boolean NOT NULL,
    value double precision,
    unit character varying(16),
    point character varying(64),
    lat double precision,
    lon double precision,
    rule character varying(64),
    raised double precision,
    t_dev double precision,
    received double precision NOT NULL,
    acked double precision,
    acked_last double precision,
    acked_step integer,
    cleared double precision,
    revived double precision,
    t_last double precision NOT NULL,
    step integer,
    rose_step integer
);
CREATE TABLE public.audit (
    id bigint NOT NULL,
    actor character varying(64) NOT NULL,
    at double precision NOT NULL,
    what character varying(32) NOT NULL,
    target character varying(64),
    detail text
);
CREATE SEQUENCE public.audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.audit_id_seq OWNED BY public.audit.id;
CREATE TABLE public.commands (
    id bigint NOT NULL,
    site character varying(64) NOT NULL,
    dev character varying(64),
    op character varying(64) NOT NULL,
    args text NOT NULL,
    actor character varying(64) NOT NULL,
    sent double precision NOT NULL,
    ok boolean,
    result text,
    answered double precision
);
CREATE SEQUENCE public.commands_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.commands_id_seq OWNED BY public.commands.id;
CREATE TABLE public.devices (
    site character varying(64) NOT NULL,
    dev character varying(64) NOT NULL,
    state character varying(16) NOT NULL,
    cls character varying(16),
    fw character varying(64),
    prof character varying(16),
    boot bigint,
    batt double precision,
    rssi double precision,
    lat double precision,
    lon double precision,
    last_seen double precision,
    t_state double precision,
    pruned bigint,
    pruned_boot bigint
);
CREATE TABLE public.messages (
    id bigint NOT NULL,
    site character varying(64) NOT NULL,
    dev character varying(64) NOT NULL,
    seq_key bigint NOT NULL,
    boot bigint NOT NULL,
    pri integer NOT NULL,
    hist boolean NOT NULL,
    verified boolean NOT NULL,
    sealed bytea,
    received double precision NOT NULL,
    t_first double precision,
    t_last double precision
);
CREATE SEQUENCE public.messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.messages_id_seq OWNED BY public.messages.id;
CREATE TABLE public.ota_progress (
    site character varying(64) NOT NULL,
    dev character varying(64) NOT NULL,
    v character varying(32) NOT NULL,
    done integer NOT NULL,
    total integer NOT NULL,
    t double precision NOT NULL,
    received double precision NOT NULL
);
CREATE TABLE public.ota_releases (
    site character varying(64) NOT NULL,
    v character varying(32) NOT NULL,
    profiles text NOT NULL,
    n integer NOT NULL,
    sig bytea NOT NULL,
    size integer NOT NULL,
    offered double precision NOT NULL
);
CREATE TABLE public.ota_rollout_nodes (
    rollout bigint NOT NULL,
    dev character varying(64) NOT NULL,
    stage integer NOT NULL,
    stage_name character varying(16) NOT NULL,
    cmd bigint,
    sends integer NOT NULL,
    state character varying(16) NOT NULL,
    detail text
);
CREATE TABLE public.ota_rollouts (
    id bigint NOT NULL,
    site character varying(64) NOT NULL,
    v character varying(32) NOT NULL,
    actor character varying(64) NOT NULL,
    created double precision NOT NULL,
    halt_share double precision NOT NULL,
    stage_timeout double precision NOT NULL,
    state character varying(16) NOT NULL,
    stage integer NOT NULL,
    stage_sent double precision,
    reason text,
    finished double precision,
    owner character varying(64),
    lease double precision
);
CREATE SEQUENCE public.ota_rollouts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.ota_rollouts_id_seq OWNED BY public.ota_rollouts.id;
CREATE TABLE public.readings (
    message bigint NOT NULL,
    site character varying(64) NOT NULL,
    dev character varying(64) NOT NULL,
    n character varying(64) NOT NULL,
    t double precision NOT NULL,
    u character varying(16),
    v double precision,
    vs text,
    vb boolean,
    vd bytea,
    s double precision
);
CREATE TABLE public.refusals (
    id bigint NOT NULL,
    topic text NOT NULL,
    reason character varying(32) NOT NULL,
    detail text NOT NULL,
    payload bytea NOT NULL,
    received double precision NOT NULL
);
CREATE SEQUENCE public.refusals_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.refusals_id_seq OWNED BY public.refusals.id;
CREATE TABLE public.reports (
    id bigint NOT NULL,
    site character varying(64) NOT NULL,
    kind character varying(16) NOT NULL,
    dev character varying(64),
    body text NOT NULL,
    received double precision NOT NULL
);
CREATE SEQUENCE public.reports_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.reports_id_seq OWNED BY public.reports.id;
CREATE TABLE public.rollups (
    site character varying(64) NOT NULL,
    dev character varying(64) NOT NULL,
    n character varying(64) NOT NULL,
    t double precision NOT NULL,
    count integer NOT NULL,
    numbers integer DEFAULT 0 NOT NULL,
    min double precision,
    max double precision,
    mean double precision,
    u character varying(16)
);
CREATE TABLE public.sessions (
    token character varying(64) NOT NULL,
    "user" character varying(64) NOT NULL,
    csrf character varying(64) NOT NULL,
    created double precision NOT NULL,
    expires double precision NOT NULL
);
CREATE TABLE public.sites (
    site character varying(64) NOT NULL,
    online boolean NOT NULL,
    session bigint,
    born double precision,
    died double precision,
    last_seen double precision
);
CREATE TABLE public.users (
    name character varying(64) NOT NULL,
    role character varying(16) NOT NULL,
    pw_hash text NOT NULL,
    created double precision NOT NULL
);
CREATE TABLE public.work_order_steps (
    id bigint NOT NULL,
    order_id bigint NOT NULL,
    step character varying(16) NOT NULL,
    actor character varying(64) NOT NULL,
    at double precision NOT NULL,
    team character varying(64),
    note text,
    action text
);
CREATE SEQUENCE public.work_order_steps_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.work_order_steps_id_seq OWNED BY public.work_order_steps.id;
CREATE TABLE public.work_orders (
    id bigint NOT NULL,
    alarm character varying(32) NOT NULL,
    site character varying(64) NOT NULL,
    state character varying(16) NOT NULL,
    team character varying(64),
    opened double precision NOT NULL,
    updated double precision NOT NULL,
    round integer NOT NULL
);
CREATE SEQUENCE public.work_orders_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.work_orders_id_seq OWNED BY public.work_orders.id;
ALTER TABLE ONLY public.alarm_events ALTER COLUMN id SET DEFAULT nextval('public.alarm_events_id_seq'::regclass);
ALTER TABLE ONLY public.audit ALTER COLUMN id SET DEFAULT nextval('public.audit_id_seq'::regclass);
ALTER TABLE ONLY public.commands ALTER COLUMN id SET DEFAULT nextval('public.commands_id_seq'::regclass);
ALTER TABLE ONLY public.messages ALTER COLUMN id SET DEFAULT nextval('public.messages_id_seq'::regclass);
ALTER TABLE ONLY public.ota_rollouts ALTER COLUMN id SET DEFAULT nextval('public.ota_rollouts_id_seq'::regclass);
ALTER TABLE ONLY public.refusals ALTER COLUMN id SET DEFAULT nextval('public.refusals_id_seq'::regclass);
ALTER TABLE ONLY public.reports ALTER COLUMN id SET DEFAULT nextval('public.reports_id_seq'::regclass);
ALTER TABLE ONLY public.work_order_steps ALTER COLUMN id SET DEFAULT nextval('public.work_order_steps_id_seq'::regclass);
ALTER TABLE ONLY public.work_orders ALTER COLUMN id SET DEFAULT nextval('public.work_orders_id_seq'::regclass);
INSERT INTO public.alarm_events VALUES (1, 'd89a4767919648b48f5330badb822f5a', 'raised', 'orange', NULL, 30, 1796694883.178586, 1796694883.1806302, 0, false, 0);
INSERT INTO public.alarm_events VALUES (2, '1d75b967b2e34812b3fa9cab1b1b366b', 'raised', 'blue', NULL, 12, 1796694883.1848624, 1796694883.2074437, 0, false, 0);
INSERT INTO public.alarm_events VALUES (3, 'd89a4767919648b48f5330badb822f5a', 'escalated', 'red', 'orange', 60, 1796694883.658849, 1796694883.6612675, 0, false, 1);
INSERT INTO public.alarm_events VALUES (4, 'd89a4767919648b48f5330badb822f5a', 'cleared', NULL, 'red', 3, 1796694884.2225978, 1796694884.2257056, 0, false, 2);
INSERT INTO public.alarms VALUES ('1d75b967b2e34812b3fa9cab1b1b366b', 's1', 'gas2', 'gas', 'ch4', 'level', 'blue', 'blue', 1, 'open', false, 12, '%LEL', NULL, NULL, NULL, 'gas.ch4', 1796694883.1848624, 1796694883.1842146, 1796694883.2074437, NULL, NULL, NULL, NULL, NULL, 1796694883.1848624, 0, 0);
INSERT INTO public.alarms VALUES ('d89a4767919648b48f5330badb822f5a', 's1', 'gas1', 'gas', 'ch4', 'level', NULL, 'red', 4, 'cleared', false, 3, '%LEL', NULL, NULL, NULL, 'gas.ch4', 1796694883.178586, 1796694883.1780279, 1796694883.1806302, 1796694884.0078175, 1796694884.0078175, 1, 1796694884.2225978, NULL, 1796694884.2225978, 2, 1);
INSERT INTO public.audit VALUES (1, 'li.wei', 1796694884.0078175, 'ack', 'd89a4767919648b48f5330badb822f5a', NULL);
INSERT INTO public.audit VALUES (2, 'li.wei', 1796694884.0637944, 'dispatch', 'work-order 1', NULL);
INSERT INTO public.audit VALUES (3, 'li.wei', 1796694884.1155896, 'report', 'work-order 1', 'valve seal leaking');
INSERT INTO public.audit VALUES (4, 'chen', 1796694884.1671693, 'send-back', 'work-order 1', 'give the reading after the repair');
INSERT INTO public.audit VALUES (5, 'li.wei', 1796694884.1747847, 'dispatch', 'work-order 1', NULL);
INSERT INTO public.devices VALUES ('s1', 'gas2', 'online', NULL, '1.0.0', 'gas', 1, 3.9, -61, NULL, NULL, 1796694883.3761919, 1796694883.1704307, NULL, NULL);
INSERT INTO public.devices VALUES ('s1', 'gas1', 'online', NULL, '1.0.0', 'gas', 1, 3.9, -61, NULL, NULL, 1796694884.4247892, 1796694883.1652474, NULL, NULL);
INSERT INTO public.messages VALUES (1, 's1', 'gas1', -9223372036854775808, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f93c0006fb41dac5d8d8ca92cd616b6464617461637365710064626f6f7401484eddef096384a64f', 1796694883.3761919, 1796694883.16521, 1796694883.16521);
INSERT INTO public.messages VALUES (2, 's1', 'gas1', -9223372036854775807, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f9400006fb41dac5d8d8ca978b616b6464617461637365710164626f6f740148af17cee6fb5bee5b', 1796694883.3761919, 1796694883.1654994, 1796694883.1654994);
INSERT INTO public.messages VALUES (3, 's1', 'gas2', -9223372036854775808, 1, 0, false, true, '\xd18443a10104a10444676173325830a4616581a400636368340164254c454c02f93c0006fb41dac5d8d8caf66b616b6464617461637365710064626f6f740148d15848cbdf91db1b', 1796694883.3761919, 1796694883.1712902, 1796694883.1712902);
INSERT INTO public.messages VALUES (4, 's1', 'gas1', -9223372036854775806, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f94f8006fb41dac5d8d8cb4b38616b6464617461637365710264626f6f740148bca0ef281c1e5502', 1796694883.3761919, 1796694883.176466, 1796694883.176466);
INSERT INTO public.messages VALUES (5, 's1', 'gas1', -9223372036854775805, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f94f8006fb41dac5d8d8cb64cf616b6464617461637365710364626f6f740148ed98baa9f749bda1', 1796694883.3761919, 1796694883.1780279, 1796694883.1780279);
INSERT INTO public.messages VALUES (6, 's1', 'gas2', -9223372036854775807, 1, 0, false, true, '\xd18443a10104a10444676173325830a4616581a400636368340164254c454c02f94a0006fb41dac5d8d8cbbbf1616b6464617461637365710164626f6f7401486687106af4f985c4', 1796694883.3761919, 1796694883.183346, 1796694883.183346);
INSERT INTO public.messages VALUES (7, 's1', 'gas2', -9223372036854775806, 1, 0, false, true, '\xd18443a10104a10444676173325830a4616581a400636368340164254c454c02f94a0006fb41dac5d8d8cbca2c616b6464617461637365710264626f6f7401489fa061dc47a7f02b', 1796694883.3761919, 1796694883.1842146, 1796694883.1842146);
INSERT INTO public.messages VALUES (8, 's1', 'gas1', -9223372036854775804, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f9538006fb41dac5d8d8ea077c616b6464617461637365710464626f6f740148fb36b1bef11f1e0d', 1796694883.8585536, 1796694883.6567068, 1796694883.6567068);
INSERT INTO public.messages VALUES (9, 's1', 'gas1', -9223372036854775803, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f9538006fb41dac5d8d8ea0f52616b6464617461637365710564626f6f7401482941942f8f46bb00', 1796694883.8585536, 1796694883.657185, 1796694883.657185);
INSERT INTO public.messages VALUES (10, 's1', 'gas1', -9223372036854775802, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f9420006fb41dac5d8d90e3637616b6464617461637365710664626f6f740148c6473400a29bf523', 1796694884.4247892, 1796694884.222059, 1796694884.222059);
INSERT INTO public.messages VALUES (11, 's1', 'gas1', -9223372036854775801, 1, 0, false, true, '\xd18443a10104a10444676173315830a4616581a400636368340164254c454c02f9420006fb41dac5d8d90e3d50616b6464617461637365710764626f6f740148e321fb1bed34d44f', 1796694884.4247892, 1796694884.2224922, 1796694884.2224922);
INSERT INTO public.readings VALUES (1, 's1', 'gas1', 'ch4', 1796694883.16521, '%LEL', 1, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (2, 's1', 'gas1', 'ch4', 1796694883.1654994, '%LEL', 2, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (3, 's1', 'gas2', 'ch4', 1796694883.1712902, '%LEL', 1, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (4, 's1', 'gas1', 'ch4', 1796694883.176466, '%LEL', 30, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (5, 's1', 'gas1', 'ch4', 1796694883.1780279, '%LEL', 30, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (6, 's1', 'gas2', 'ch4', 1796694883.183346, '%LEL', 12, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (7, 's1', 'gas2', 'ch4', 1796694883.1842146, '%LEL', 12, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (8, 's1', 'gas1', 'ch4', 1796694883.6567068, '%LEL', 60, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (9, 's1', 'gas1', 'ch4', 1796694883.657185, '%LEL', 60, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (10, 's1', 'gas1', 'ch4', 1796694884.222059, '%LEL', 3, NULL, NULL, NULL, NULL);
INSERT INTO public.readings VALUES (11, 's1', 'gas1', 'ch4', 1796694884.2224922, '%LEL', 3, NULL, NULL, NULL, NULL);
INSERT INTO public.sites VALUES ('s1', true, 1796694882064, 1796694883.0241547, NULL, 1796694883.0241547);
INSERT INTO public.work_order_steps VALUES (1, 1, 'opened', 'system', 1796694883.1806302, NULL, 'orange ch4', NULL);
INSERT INTO public.work_order_steps VALUES (2, 1, 'ack', 'li.wei', 1796694884.0078175, NULL, NULL, NULL);
INSERT INTO public.work_order_steps VALUES (3, 1, 'dispatch', 'li.wei', 1796694884.0637944, 'pipe team 3', NULL, NULL);
INSERT INTO public.work_order_steps VALUES (4, 1, 'report', 'li.wei', 1796694884.1155896, NULL, 'valve seal leaking', 'seal replaced');
INSERT INTO public.work_order_steps VALUES (5, 1, 'send-back', 'chen', 1796694884.1671693, NULL, 'give the reading after the repair', NULL);
INSERT INTO public.work_order_steps VALUES (6, 1, 'dispatch', 'li.wei', 1796694884.1747847, 'pipe team 4', NULL, NULL);
INSERT INTO public.work_orders VALUES (1, 'd89a4767919648b48f5330badb822f5a', 's1', 'dispatched', 'pipe team 4', 1796694883.1806302, 1796694884.1747847, 2);
SELECT pg_catalog.setval('public.alarm_events_id_seq', 5, true);
SELECT pg_catalog.setval('public.audit_id_seq', 5, true);
SELECT pg_catalog.setval('public.commands_id_seq', 1, false);
SELECT pg_catalog.setval('public.messages_id_seq', 11, true);
SELECT pg_catalog.setval('public.ota_rollouts_id_seq', 1, false);
SELECT pg_catalog.setval('public.refusals_id_seq', 1, false);
SELECT pg_catalog.setval('public.reports_id_seq', 1, false);
SELECT pg_catalog.setval('public.work_order_steps_id_seq', 6, true);
SELECT pg_catalog.setval('public.work_orders_id_seq', 2, true);
ALTER TABLE ONLY public.alarm_events
    ADD CONSTRAINT alarm_events_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.alarms
    ADD CONSTRAINT alarms_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.commands
    ADD CONSTRAINT commands_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.devices
    ADD CONSTRAINT devices_pkey PRIMARY KEY (site, dev);
ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_once UNIQUE (site, dev, seq_key);
ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.ota_progress
    ADD CONSTRAINT ota_progress_pkey PRIMARY KEY (site, dev);
ALTER TABLE ONLY public.ota_releases
    ADD CONSTRAINT ota_releases_pkey PRIMARY KEY (site, v);
ALTER TABLE ONLY public.ota_rollout_nodes
    ADD CONSTRAINT ota_rollout_nodes_pkey PRIMARY KEY (rollout, dev);
ALTER TABLE ONLY public.ota_rollouts
    ADD CONSTRAINT ota_rollouts_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.refusals
    ADD CONSTRAINT refusals_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.reports
    ADD CONSTRAINT reports_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.rollups
    ADD CONSTRAINT rollups_pkey PRIMARY KEY (site, dev, n, t);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (token);
ALTER TABLE ONLY public.sites
    ADD CONSTRAINT sites_pkey PRIMARY KEY (site);
ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (name);
ALTER TABLE ONLY public.work_order_steps
    ADD CONSTRAINT work_order_steps_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.work_orders
    ADD CONSTRAINT work_orders_alarm_key UNIQUE (alarm);
ALTER TABLE ONLY public.work_orders
    ADD CONSTRAINT work_orders_pkey PRIMARY KEY (id);
CREATE UNIQUE INDEX alarm_events_once ON public.alarm_events USING btree (alarm, ev, t_gw, COALESCE(step, '-1'::integer));
CREATE INDEX alarms_open ON public.alarms USING btree (state, level);
CREATE INDEX alarms_received ON public.alarms USING btree (received);
CREATE INDEX messages_span ON public.messages USING btree (site, dev, t_last);
CREATE UNIQUE INDEX ota_rollouts_one_running ON public.ota_rollouts USING btree (site) WHERE ((state)::text = 'running'::text);
CREATE INDEX readings_message ON public.readings USING btree (message);
CREATE INDEX readings_series ON public.readings USING btree (site, dev, n, t);
CREATE INDEX readings_time ON public.readings USING btree (t, message);
CREATE INDEX work_order_steps_order ON public.work_order_steps USING btree (order_id);
CREATE INDEX work_orders_open ON public.work_orders USING btree (state) WHERE ((state)::text <> 'closed'::text);
ALTER TABLE ONLY public.ota_rollout_nodes
    ADD CONSTRAINT ota_rollout_nodes_rollout_fkey FOREIGN KEY (rollout) REFERENCES public.ota_rollouts(id);
ALTER TABLE ONLY public.readings
    ADD CONSTRAINT readings_message_fkey FOREIGN KEY (message) REFERENCES public.messages(id);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_user_fkey FOREIGN KEY ("user") REFERENCES public.users(name);
ALTER TABLE ONLY public.work_order_steps
    ADD CONSTRAINT work_order_steps_order_id_fkey FOREIGN KEY (order_id) REFERENCES public.work_orders(id);
