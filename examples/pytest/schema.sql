-- The database every test starts from: built once, then cloned for each test.
create table users (
    id    serial primary key,
    email text not null unique
);

create table orders (
    id       serial primary key,
    user_id  int not null references users (id),
    total    numeric(10, 2) not null check (total >= 0)
);

insert into users (email) values ('ada@example.com'), ('linus@example.com');
insert into orders (user_id, total) values (1, 12.50), (1, 7.25), (2, 99.00);
